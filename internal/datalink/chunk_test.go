package datalink

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

var testSecret = bytes.Repeat([]byte{7}, secretLen)

// encode seals chunks as a sender with secret would, a nil chunk as the end marker.
func encode(secret []byte, chunks ...[]byte) []byte {
	s := newSealer(secret)
	var b []byte
	for _, c := range chunks {
		n := copy(s.payload(), c)
		record, err := s.seal(n, c == nil)
		if err != nil {
			panic(err)
		}
		b = append(b, record...)
	}
	return b
}

// records splits a stream made by encode into its records.
func records(stream []byte) [][]byte {
	var out [][]byte
	for len(stream) >= headerLen {
		n := headerLen + int(binary.BigEndian.Uint32(stream)&^lastFlag) + tagLen
		out = append(out, stream[:n])
		stream = stream[n:]
	}
	return out
}

func TestDecoder(t *testing.T) {
	big := bytes.Repeat([]byte{0, 0xff}, MaxChunk/2)
	good := encode(testSecret, []byte("a"), []byte("bc"), nil)
	rec := records(good)
	flip := func(at int) []byte {
		b := bytes.Clone(good)
		b[at] ^= 1
		return b
	}
	// A forged end marker: sealed with another secret, or an unsealed header alone.
	otherEnd := records(encode(bytes.Repeat([]byte{8}, secretLen), []byte("a"), nil))[1]
	tests := []struct {
		name    string
		stream  []byte
		want    [][]byte
		wantErr bool // else the stream ends cleanly
	}{
		{"empty stream", encode(testSecret, nil), nil, false},
		{"chunks then end", encode(testSecret, []byte("a"), []byte("bc"), big, nil), [][]byte{[]byte("a"), []byte("bc"), big}, false},
		{"data after the end is never read", append(bytes.Clone(good), 0xde, 0xad), [][]byte{[]byte("a"), []byte("bc")}, false},
		{"no end marker", encode(testSecret, []byte("a")), [][]byte{[]byte("a")}, true},
		{"nothing at all", nil, nil, true},
		{"cut in a header", good[:3], nil, true},
		{"cut in a record", good[:headerLen+1], nil, true},
		{"chunk too big", binary.BigEndian.AppendUint32(nil, MaxChunk+1), nil, true},
		{"end marker with data", binary.BigEndian.AppendUint32(nil, lastFlag|1), nil, true},
		{"empty chunk", binary.BigEndian.AppendUint32(nil, 0), nil, true},
		{"another key", encode(bytes.Repeat([]byte{8}, secretLen), []byte("a"), nil), nil, true},
		{"flipped length", flip(3), nil, true},
		{"flipped data", flip(headerLen), nil, true},
		{"flipped tag", flip(len(rec[0]) - 1), nil, true},
		{"flipped last flag", flip(0), nil, true},
		{"records swapped", bytes.Join([][]byte{rec[1], rec[0], rec[2]}, nil), nil, true},
		{"record replayed", bytes.Join([][]byte{rec[0], rec[0], rec[2]}, nil), [][]byte{[]byte("a")}, true},
		{"record dropped", bytes.Join([][]byte{rec[0], rec[2]}, nil), [][]byte{[]byte("a")}, true},
		{"forged end", bytes.Join([][]byte{rec[0], otherEnd}, nil), [][]byte{[]byte("a")}, true},
		{"unsealed end", bytes.Join([][]byte{rec[0], binary.BigEndian.AppendUint32(nil, lastFlag)}, nil), [][]byte{[]byte("a")}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDecoder(bytes.NewReader(tt.stream), testSecret)
			var got [][]byte
			var err error
			for {
				var c []byte
				if c, err = d.next(); err != nil {
					break
				}
				got = append(got, bytes.Clone(c))
			}
			if clean := errors.Is(err, io.EOF); clean == tt.wantErr {
				t.Fatalf("ended with %v; want an error: %v", err, tt.wantErr)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("%d chunks, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if !bytes.Equal(got[i], tt.want[i]) {
					t.Fatalf("chunk %d differs", i)
				}
			}
			if _, again := d.next(); !tt.wantErr && !errors.Is(again, io.EOF) {
				t.Fatalf("after the end: %v, want EOF again", again)
			}
		})
	}
}

// The key changes every recordsPerKey records, the same way on both sides; records sealed
// under one epoch's key do not open under another's.
func TestKeysChangeWithEpochs(t *testing.T) {
	s := newSealer(testSecret)
	d := newDecoder(nil, testSecret)
	tests := []struct {
		name string
		seq  uint64
	}{
		{"first record", 0},
		{"last of the first key", recordsPerKey - 1},
		{"first of the second key", recordsPerKey},
		{"far along", 5*recordsPerKey + 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.seq, d.seq = tt.seq, tt.seq
			copy(s.payload(), "x")
			record, err := s.seal(1, false)
			if err != nil {
				t.Fatal(err)
			}
			d.r, d.ahead = bytes.NewReader(record), 0
			if c, err := d.next(); err != nil || string(c) != "x" {
				t.Fatalf("got %q, %v", c, err)
			}
			// The same record as the neighbour of another epoch.
			d.seq = tt.seq ^ recordsPerKey
			d.r, d.ahead = bytes.NewReader(record), 0
			if _, err := d.next(); !errors.Is(err, errForged) {
				t.Fatalf("opened under the key of seq %d: %v", d.seq, err)
			}
		})
	}
}

// FuzzDecoder feeds the decoder what a peer could send after the handshake: it must end with
// EOF only after an end marker, never return more than it was sent, never return data that
// was not sealed with the link's key, and never hold a buffer larger than one record.
func FuzzDecoder(f *testing.F) {
	f.Add(encode(testSecret, []byte("hello"), nil), false)
	f.Add(encode(testSecret, []byte("a"), []byte("b")), false)
	f.Add(encode(testSecret, []byte("a"), nil), true)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff}, false)
	f.Add([]byte{0, 0x10, 0, 0, 1}, false)
	f.Fuzz(func(t *testing.T, stream []byte, foreignKey bool) {
		secret := testSecret
		if foreignKey {
			// Nothing sealed with another key may come out.
			secret = bytes.Repeat([]byte{9}, secretLen)
		}
		d := newDecoder(bytes.NewReader(stream), secret)
		total := 0
		for {
			c, err := d.next()
			if err != nil {
				if errors.Is(err, io.EOF) && !d.done {
					t.Fatal("EOF without an end marker")
				}
				if foreignKey && d.done {
					t.Fatal("an end marker opened under a foreign key")
				}
				break
			}
			if foreignKey {
				t.Fatal("a chunk opened under a foreign key")
			}
			if len(c) == 0 || len(c) > MaxChunk {
				t.Fatalf("chunk of %d bytes", len(c))
			}
			total += headerLen + len(c) + tagLen
			if total > len(stream) {
				t.Fatal("returned more than the stream held")
			}
		}
		if cap(d.buf) > headerLen+MaxChunk+tagLen {
			t.Fatalf("buffer of %d bytes", cap(d.buf))
		}
	})
}
