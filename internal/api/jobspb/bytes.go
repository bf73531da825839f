package jobspb

// ToBytes turns arguments, environment entries or paths into the bytes fields that carry them:
// the kernel takes any bytes there, and a proto3 string must be UTF-8.
func ToBytes(ss []string) [][]byte {
	if ss == nil {
		return nil
	}
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

// FromBytes turns bytes fields back into Go strings, which hold any bytes as they are.
func FromBytes(bs [][]byte) []string {
	if bs == nil {
		return nil
	}
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = string(b)
	}
	return out
}
