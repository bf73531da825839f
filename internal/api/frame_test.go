package api

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/ssi-cluster/ssi/internal/api/ssipb"
)

func TestRunOutputFieldNumbers(t *testing.T) {
	fields := (&ssipb.RunOutput{}).ProtoReflect().Descriptor().Fields()
	for name, want := range map[string]protowire.Number{"stdout": RunOutputStdout, "stderr": RunOutputStderr} {
		if got := fields.ByName(protoreflect.Name(name)).Number(); got != want {
			t.Errorf("RunOutput.%s is field %d, frames use %d", name, got, want)
		}
	}
}

// split cuts b into buffers at the given points, as gRPC may hand a message over.
func split(b []byte, cuts ...int) mem.BufferSlice {
	var out mem.BufferSlice
	prev := 0
	for _, c := range append(cuts, len(b)) {
		c = min(max(c, prev), len(b))
		out = append(out, mem.SliceBuffer(b[prev:c]))
		prev = c
	}
	return out
}

func TestFramesPassOutputThrough(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789"), 30000)
	framer := NewBytesFramer(1 << 20)
	frame, err := framer.Read(bytes.NewReader(payload), RunOutputStderr)
	if err != nil || frame == nil {
		t.Fatalf("Read: %v %v", frame, err)
	}
	if frame.Field() != RunOutputStderr {
		t.Fatalf("field %d", frame.Field())
	}
	// What the producer sends is an ordinary RunOutput on the wire.
	wire, err := Codec{}.Marshal(frame)
	if err != nil {
		t.Fatal(err)
	}
	encoded := wire.Materialize()
	wire.Free()
	var msg ssipb.RunOutput
	if err := proto.Unmarshal(encoded, &msg); err != nil || !bytes.Equal(msg.GetStderr(), payload) {
		t.Fatalf("decoded as RunOutput: %v, %d bytes of stderr", err, len(msg.GetStderr()))
	}
	// A receiver writes the payload out however the message was cut into buffers.
	for _, cuts := range [][]int{nil, {1}, {2}, {3, 4}, {100, 1000, 200000}} {
		var got Frame
		if err := (Codec{}).Unmarshal(split(encoded, cuts...), &got); err != nil {
			t.Fatal(err)
		}
		if out, err := payloadOf(&got); err != nil || !bytes.Equal(out, payload) {
			t.Fatalf("cuts %v: got %d bytes, %v", cuts, len(out), err)
		}
	}
	// Other messages are decoded as usual.
	exit, _ := proto.Marshal(&ssipb.RunOutput{Msg: &ssipb.RunOutput_Exit{Exit: &ssipb.RunExit{Code: 3, Message: "m"}}})
	var f Frame
	if err := (Codec{}).Unmarshal(split(exit, 1), &f); err != nil {
		t.Fatal(err)
	}
	var back ssipb.RunOutput
	if err := f.Decode(&back); err != nil || back.GetExit().GetCode() != 3 {
		t.Fatalf("Decode: %v %v", err, &back)
	}
}

func TestFrameRejectsWhatIsNotOneBytesField(t *testing.T) {
	two, _ := proto.Marshal(&ssipb.RunOutput{Msg: &ssipb.RunOutput_Stdout{Stdout: []byte("ab")}})
	two = append(two, two...)
	for name, b := range map[string][]byte{
		"empty": nil, "varint field": {0x08, 0x01}, "two fields": two, "short": {0x12, 0x05, 'a'},
	} {
		f := Frame{data: split(b)}
		if _, err := payloadOf(&f); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzFrame feeds arbitrary messages, cut anywhere, to what a receiver does with frames.
func FuzzFrame(f *testing.F) {
	good, _ := proto.Marshal(&ssipb.RunOutput{Msg: &ssipb.RunOutput_Stdout{Stdout: []byte("hello")}})
	f.Add(good, 1)
	f.Add([]byte{0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, 3)
	f.Fuzz(func(t *testing.T, b []byte, cut int) {
		fr := Frame{data: split(b, cut)}
		fr.Field()
		out, err := payloadOf(&fr)
		if err == nil {
			var msg ssipb.RunOutput
			if perr := proto.Unmarshal(b, &msg); perr == nil && msg.GetStdout() != nil && !bytes.Equal(msg.GetStdout(), out) {
				t.Fatalf("got %q, the message holds %q", out, msg.GetStdout())
			}
		}
	})
}

func TestMessageFrameSendsPayloadAsItIs(t *testing.T) {
	payload := bytes.Repeat([]byte("csr"), 50000)
	frame, err := NewMessageFrame(&ssipb.JoinRequest{Name: "n2", Protocol: 7}, 6, mem.SliceBuffer(payload))
	if err != nil {
		t.Fatal(err)
	}
	if frame.data[1].ReadOnlyData()[0] != payload[0] || &frame.data[1].ReadOnlyData()[0] != &payload[0] {
		t.Fatal("the payload was copied")
	}
	wire, err := Codec{}.Marshal(frame)
	if err != nil {
		t.Fatal(err)
	}
	encoded := wire.Materialize()
	var msg ssipb.JoinRequest
	if err := proto.Unmarshal(encoded, &msg); err != nil || msg.Name != "n2" || msg.Protocol != 7 || !bytes.Equal(msg.CsrPem, payload) {
		t.Fatalf("decoded as JoinRequest: %v %q %d, %d bytes", err, msg.Name, msg.Protocol, len(msg.CsrPem))
	}
	for _, cuts := range [][]int{nil, {1}, {4, 5, 6}, {100, 1000, 70000}} {
		var got Frame
		if err := (Codec{}).Unmarshal(split(encoded, cuts...), &got); err != nil {
			t.Fatal(err)
		}
		var back ssipb.JoinRequest
		parts, err := got.DecodeSplit(&back, 6)
		if err != nil || back.Name != "n2" || back.Protocol != 7 || back.CsrPem != nil || !bytes.Equal(bytes.Join(parts, nil), payload) {
			t.Fatalf("cuts %v: %v %v", cuts, err, &back)
		}
		got.Free()
	}
}

// FuzzDecodeSplit checks that a frame decoded with its payload left in place says what
// protobuf says of the same message, however it was cut.
func FuzzDecodeSplit(f *testing.F) {
	good, _ := proto.Marshal(&ssipb.JoinRequest{Name: "n", CsrPem: []byte("pem"), Advertise: "a:1"})
	f.Add(good, 3, 7)
	f.Add(append(good, 0x32, 0x01, 'x', 0x33, 0x34), 0, 1)
	f.Add([]byte{0x0b, 0x13, 0x14, 0x0c}, 1, 2)
	f.Fuzz(func(t *testing.T, b []byte, cut1, cut2 int) {
		var want ssipb.JoinRequest
		werr := proto.Unmarshal(b, &want)
		fr := Frame{data: split(b, cut1, cut2)}
		var got ssipb.JoinRequest
		parts, err := fr.DecodeSplit(&got, 6)
		if (err == nil) != (werr == nil) {
			t.Fatalf("DecodeSplit: %v, protobuf: %v", err, werr)
		}
		if err != nil {
			return
		}
		payload := bytes.Join(parts, nil)
		if !bytes.Equal(payload, want.CsrPem) || (parts == nil) != (want.CsrPem == nil) {
			t.Fatalf("payload %q, protobuf %q", payload, want.CsrPem)
		}
		want.CsrPem = nil
		if !proto.Equal(&got, &want) {
			t.Fatalf("decoded %v, protobuf %v", &got, &want)
		}
	})
}

// payloadOf is what a receiver writes out of a frame of one bytes field (OutputFile.WriteFrame),
// joined; it releases the frame.
func payloadOf(f *Frame) ([]byte, error) {
	defer f.Free()
	views, err := f.bytesPayload()
	return bytes.Join(views, nil), err
}
