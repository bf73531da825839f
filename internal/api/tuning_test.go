package api

import "testing"

func TestTieredPool(t *testing.T) {
	p := newTieredPool(8, 12, 14)
	for _, tt := range []struct{ n, cap int }{
		{0, 256}, {1, 256}, {256, 256}, {257, 4096}, {4096, 4096}, {4097, 16384}, {16384, 16384}, {16385, 16385},
	} {
		bp := p.Get(tt.n)
		if len(*bp) != tt.n || cap(*bp) != tt.cap {
			t.Errorf("Get(%d): len %d cap %d, want cap %d", tt.n, len(*bp), cap(*bp), tt.cap)
		}
		p.Put(bp)
	}
	// Buffers of sizes the pool does not hold are dropped, not handed out for another size.
	odd := make([]byte, 5000)
	p.Put(&odd)
	if bp := p.Get(4097); cap(*bp) != 16384 {
		t.Errorf("Get(4097) after Put of 5000 bytes: cap %d", cap(*bp))
	}
}
