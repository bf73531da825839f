package procspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"google.golang.org/grpc/metadata"

	"github.com/ssi-cluster/ssi/internal/api"
	"github.com/ssi-cluster/ssi/internal/datalink"
)

// Bulk stdout. When the client passed its stdout to its agent (api.PassOutput) and the command
// runs on another node, the local agent offers a data link (package datalink) in the Exec
// call's metadata. The remote agent sends the first bulkAfter bytes of stdout as frames, as
// before, so that short outputs cost no extra connection; past that it dials the link, sends an
// empty stdout frame as the marker that stdout continues there, and streams the rest of it on
// the link, which ends cleanly before the exit status is sent. The local agent writes the link
// into the client's stdout and forwards the exit status only once the link has ended cleanly:
// all output is delivered before the client exits. stderr, stdin, signals and the status stay
// on the stream. A remote that cannot dial keeps using frames.

// bulkTokenKey is the metadata key of the offered link's token.
const bulkTokenKey = "ssi-bulk-token"

// defaultBulkAfter is how much stdout goes as frames before the remote agent switches to the
// link. Setting a link up costs 1.2-1.8 ms of CPU over both agents (BenchmarkLinkSetup in
// datalink), and the link saves 0.5-1 ms of agent CPU per MiB: it pays from about here on,
// and the many short outputs pay no connection at all.
const defaultBulkAfter = 2 << 20

// bulkOffer is the link a session's client side offered, as the remote agent sees it.
type bulkOffer struct {
	node  string // the node to dial: the one whose agent made the Exec call
	token datalink.Token
}

// offeredBulk returns the link offered in an Exec call, or nil.
func (s *Service) offeredBulk(ctx context.Context) *bulkOffer {
	if s.cfg.Link == nil {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(bulkTokenKey)
	if len(vals) != 1 {
		return nil
	}
	token, err := datalink.ParseToken(vals[0])
	if err != nil {
		return nil
	}
	// Dialled back to the node that called, as its certificate names it: never to an address
	// the request could choose.
	peer, err := api.NodeFrom(ctx)
	if err != nil {
		return nil
	}
	return &bulkOffer{node: peer.Name, token: token}
}

// isBulkMarker reports whether a frame is the empty stdout frame that says the rest of stdout
// comes on the link.
func isBulkMarker(f *api.Frame) bool {
	return f.Field() == api.RunOutputStdout && f.Len() == 2 // tag and a zero length
}

// bulkMarker makes that frame.
func bulkMarker() *api.Frame { return api.NewBytesFrame(api.RunOutputStdout, nil) }

// sendBulk streams f, the command's stdout, on a link dialled for offer until f ends, after
// queueing the marker on out. It returns false, having sent nothing, if the link cannot be
// had: the caller goes on with frames.
func (s *Service) sendBulk(ctx context.Context, offer *bulkOffer, f *os.File, out chan<- *api.Frame) (bool, error) {
	sender, err := s.cfg.Link.Dial(ctx, offer.node, offer.token)
	if err != nil {
		s.log.Debug("no data link: stdout goes on as frames", "node", offer.node, "err", err)
		return false, nil
	}
	// Ending the session ends a write blocked on a slow reader.
	stop := context.AfterFunc(ctx, sender.Abort)
	defer stop()
	select {
	case out <- bulkMarker():
	case <-ctx.Done():
		sender.Abort()
		return true, ctx.Err()
	}
	if _, err := sender.ReadFrom(f); err != nil {
		sender.Abort()
		return true, err
	}
	return true, sender.Close()
}

// expectBulk offers a link for the stdout of a session relayed to node when its client passed
// its stdout; it returns ctx with the offer and the pending link, or ctx and nil.
func (s *Service) expectBulk(ctx context.Context, client runStream, node string) (context.Context, *datalink.Pending) {
	o, ok := client.(*outputStream)
	if s.cfg.Link == nil || !ok || o.out.Stdout == nil {
		return ctx, nil
	}
	p, err := s.cfg.Link.Expect(node)
	if err != nil {
		s.log.Warn("offering a data link", "err", err)
		return ctx, nil
	}
	return metadata.AppendToOutgoingContext(ctx, bulkTokenKey, p.Token.String()), p
}

// receiveBulk writes what arrives on the link into the client's stdout until the link ends.
// An error from the client's stdout is errOutputFailed.
func receiveBulk(ctx context.Context, p *datalink.Pending, client *outputStream) error {
	r, err := p.Receiver(ctx)
	if err != nil {
		return fmt.Errorf("waiting for the data link: %w", err)
	}
	defer r.Close()
	// Chunks come in up to 1 MiB when the reader is the slower side: a pipe that holds one
	// takes it in one write instead of sixteen waits for the reader (session 4: ~40 % fewer
	// context switches and ~0.07 s/GB less CPU in this agent).
	client.out.Stdout.GrowPipe(datalink.MaxChunk)
	stop := context.AfterFunc(ctx, r.Close)
	defer stop()
	for {
		chunk, err := r.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if err := client.writeStdout(chunk); err != nil {
			return err
		}
	}
}
