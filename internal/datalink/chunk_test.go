package datalink

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func encode(chunks ...[]byte) []byte {
	var b []byte
	for _, c := range chunks {
		h := make([]byte, headerLen)
		putHeader(h, len(c))
		b = append(append(b, h...), c...)
	}
	return b
}

func TestDecoder(t *testing.T) {
	big := bytes.Repeat([]byte{0, 0xff}, MaxChunk/2)
	tests := []struct {
		name    string
		stream  []byte
		want    [][]byte
		wantErr bool // else the stream ends cleanly
	}{
		{"empty stream", encode(nil), nil, false},
		{"chunks then end", encode([]byte("a"), []byte("bc"), big, nil), [][]byte{[]byte("a"), []byte("bc"), big}, false},
		{"data after the end is never read", append(encode([]byte("a"), nil), 0xde, 0xad), [][]byte{[]byte("a")}, false},
		{"no end marker", encode([]byte("a")), [][]byte{[]byte("a")}, true},
		{"nothing at all", nil, nil, true},
		{"cut in a header", encode([]byte("a"))[:3], nil, true},
		{"cut in a chunk", encode([]byte("abc"))[:6], nil, true},
		{"chunk too big", encode(append(big, 1)), nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decoder{r: bytes.NewReader(tt.stream)}
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
			if _, again := d.next(); tt.wantErr == false && !errors.Is(again, io.EOF) {
				t.Fatalf("after the end: %v, want EOF again", again)
			}
		})
	}
}

// FuzzDecoder feeds the decoder what a peer could send after the handshake: it must end with
// EOF only after an end marker, never return more than it was sent, and never hold a buffer
// larger than MaxChunk.
func FuzzDecoder(f *testing.F) {
	f.Add(encode([]byte("hello"), nil))
	f.Add(encode([]byte("a"), []byte("b")))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0x10, 0, 0, 1})
	f.Fuzz(func(t *testing.T, stream []byte) {
		d := decoder{r: bytes.NewReader(stream)}
		total := 0
		for {
			c, err := d.next()
			if err != nil {
				if errors.Is(err, io.EOF) && !d.done {
					t.Fatal("EOF without an end marker")
				}
				break
			}
			if len(c) == 0 || len(c) > MaxChunk {
				t.Fatalf("chunk of %d bytes", len(c))
			}
			total += headerLen + len(c)
			if total > len(stream) {
				t.Fatal("returned more than the stream held")
			}
		}
		if cap(d.buf) > MaxChunk {
			t.Fatalf("buffer of %d bytes", cap(d.buf))
		}
	})
}
