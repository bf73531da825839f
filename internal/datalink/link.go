// Package datalink carries the bulk output of one remote session on a mutual-TLS connection of
// its own, beside the session's gRPC stream. gRPC costs the agents most of their CPU per byte
// of output (16 KiB HTTP/2 frames, flow-control updates, a goroutine hand-off per frame); here
// the sending agent reads the process's pipe straight into the buffer it encrypts and the
// receiving agent decrypts in place into the buffer it writes to the client's stdout, one
// goroutine on each side, one record per chunk (see the record layer in chunk.go).
//
// The node holding the client's stdout expects a link (Expect) and hands its random token to
// the node running the command within the session's own mTLS stream; that node dials back
// (Dial), presenting its node certificate and the token. A connection is accepted only with a
// node certificate of this cluster whose node is the one the session runs on, and only for a
// token still expected: nobody else can inject output into a session or read it. The link is
// one way; on it, chunks follow each other as sealed records, and a sealed end marker ends
// the stream cleanly (anything else that ends it is an error, so the receiver never mistakes
// a lost node for the end of the output).
package datalink

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ssi-cluster/ssi/internal/pki"
)

// Token binds a connection to the one session that expects it.
type Token [16]byte

func (t Token) String() string { return hex.EncodeToString(t[:]) }

// ParseToken parses the form String gives.
func ParseToken(s string) (Token, error) {
	var t Token
	// hex.DecodedLen rounds down, so it would let a 33rd digit through.
	if len(s) != hex.EncodedLen(len(t)) {
		return Token{}, errors.New("data link token: wrong length")
	}
	// hex.Decode fills the bytes before a bad digit: hand none of them out.
	if _, err := hex.Decode(t[:], []byte(s)); err != nil {
		return Token{}, fmt.Errorf("data link token: %w", err)
	}
	return t, nil
}

// hello is what a dialler sends after the TLS handshake: magic and version, then the token.
// Version 2 moved the stream from TLS records to the link's own (chunk.go).
var magic = [8]byte{'s', 's', 'i', 'l', 'i', 'n', 'k', 2}

const (
	helloLen = len(magic) + len(Token{})
	ack      = 'k'
	// setupTimeout bounds the handshake and the hello on both sides.
	setupTimeout = 10 * time.Second
	// connectTimeout bounds the TCP connect, while the session's output waits: a node whose
	// link port is filtered must not stall it for long.
	connectTimeout = 2 * time.Second
	// unreachableFor is how long a node whose link could not be connected is not dialled
	// again, so that its sessions keep using the slower path without waiting.
	unreachableFor = 30 * time.Second
)

// Config configures a Link.
type Config struct {
	// ClientTLS verifies the server's node certificate (pki.ClientTLS).
	ClientTLS *tls.Config
	// AddrOf returns the data link address (host:port) of a node.
	AddrOf func(node string) (string, bool)
	Logger *slog.Logger
}

// Link accepts and dials data links for one node.
type Link struct {
	cfg    Config
	client *tls.Config

	mu          sync.Mutex
	pending     map[Token]*Pending
	unreachable map[string]time.Time // node → when to try again
}

// New returns a Link; Serve accepts its connections.
func New(cfg Config) *Link {
	client := cfg.ClientTLS.Clone()
	// Bulk data from the first byte: no small records to start with.
	client.DynamicRecordSizingDisabled = true
	return &Link{cfg: cfg, client: client, pending: map[Token]*Pending{}, unreachable: map[string]time.Time{}}
}

// Serve accepts connections on lis until it is closed. Its connections must be TLS requiring
// and verifying a node certificate (pki.StrictServerTLS), as tls.NewListener or the agent's
// link port (internal/peermux) gives them.
func (l *Link) Serve(lis net.Listener) {
	for {
		conn, err := lis.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, say: sessions keep their frames meanwhile, and the
			// agent goes on.
			l.cfg.Logger.Warn("accepting data links", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go l.accept(conn)
	}
}

// accept authenticates a connection and hands it to the session whose token it presents; it
// closes any connection it cannot hand over.
func (l *Link) accept(raw net.Conn) {
	conn, ok := raw.(*tls.Conn)
	if !ok {
		l.cfg.Logger.Warn("refusing a data link that is not TLS", "remote", raw.RemoteAddr())
		raw.Close()
		return
	}
	if err := l.admit(conn); err != nil {
		l.cfg.Logger.Debug("refusing a data link", "remote", raw.RemoteAddr(), "err", err)
		raw.Close()
	}
}

func (l *Link) admit(conn *tls.Conn) error {
	_ = conn.SetDeadline(time.Now().Add(setupTimeout))
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		return err
	}
	node, _, err := pki.PeerNode(conn.ConnectionState())
	if err != nil {
		return err
	}
	var hello [helloLen]byte
	if _, err := io.ReadFull(conn, hello[:]); err != nil {
		return fmt.Errorf("reading the hello: %w", err)
	}
	if [len(magic)]byte(hello[:len(magic)]) != magic {
		return errors.New("not a data link hello, or another version")
	}
	token := Token(hello[len(magic):])
	l.mu.Lock()
	p := l.pending[token]
	if p == nil || p.node != node {
		l.mu.Unlock()
		// The same answer for an unknown token and another node's: it tells nothing.
		return fmt.Errorf("no session of node %s expects this link", node)
	}
	delete(l.pending, token)
	// Handed over under the lock, so that Pending.Close either refuses it (the token is gone)
	// or finds it to close. The channel holds one, and each token is handed one at most.
	_ = conn.SetDeadline(time.Time{})
	p.conn <- conn
	l.mu.Unlock()
	// A failed acknowledgement fails the dialler too, which then never uses the link.
	_ = conn.SetWriteDeadline(time.Now().Add(setupTimeout))
	_, _ = conn.Write([]byte{ack})
	_ = conn.SetWriteDeadline(time.Time{})
	return nil
}

// Pending is a link a session expects from one node.
type Pending struct {
	Token Token
	link  *Link
	node  string
	conn  chan *tls.Conn
}

// Expect registers a link that node may dial with the returned Pending's token. The caller
// must Close it.
func (l *Link) Expect(node string) (*Pending, error) {
	p := &Pending{link: l, node: node, conn: make(chan *tls.Conn, 1)}
	if _, err := rand.Read(p.Token[:]); err != nil {
		return nil, fmt.Errorf("making a data link token: %w", err)
	}
	l.mu.Lock()
	l.pending[p.Token] = p
	l.mu.Unlock()
	return p, nil
}

// Receiver waits until the link is connected, or ctx ends.
func (p *Pending) Receiver(ctx context.Context) (*Receiver, error) {
	select {
	case conn := <-p.conn:
		secret, err := linkSecret(conn, p.Token)
		if err != nil {
			conn.NetConn().Close()
			return nil, err
		}
		// The sender writes nothing after its hello until it has the acknowledgement, so
		// TLS has buffered nothing past the hello: the records start on the socket itself.
		return &Receiver{conn: conn, dec: newDecoder(newRawReader(conn.NetConn()), secret)}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close withdraws the token and closes a connection nobody took.
func (p *Pending) Close() {
	p.link.mu.Lock()
	if p.link.pending[p.Token] == p {
		delete(p.link.pending, p.Token)
	}
	p.link.mu.Unlock()
	select {
	case conn := <-p.conn:
		conn.NetConn().Close()
	default:
	}
}

// linkSecret is the secret the link's keys derive from; both ends of conn get the same.
func linkSecret(conn *tls.Conn, token Token) ([]byte, error) {
	cs := conn.ConnectionState()
	secret, err := cs.ExportKeyingMaterial(exporterLabel, token[:], secretLen)
	if err != nil {
		return nil, fmt.Errorf("data link keys: %w", err)
	}
	return secret, nil
}

// Receiver reads the chunks of one link.
type Receiver struct {
	conn *tls.Conn
	dec  *decoder
}

// Next returns the next chunk, valid until the next call; io.EOF at the clean end of the
// stream. Any other end is an error.
func (r *Receiver) Next() ([]byte, error) { return r.dec.next() }

// Close closes the connection; it may be called while Next blocks, to end it.
func (r *Receiver) Close() { r.conn.NetConn().Close() }

// Dial connects to node's link with token; the server must hold node's certificate.
func (l *Link) Dial(ctx context.Context, node string, token Token) (*Sender, error) {
	addr, ok := l.cfg.AddrOf(node)
	if !ok {
		return nil, fmt.Errorf("no data link address known for node %s", node)
	}
	l.mu.Lock()
	retry := l.unreachable[node]
	l.mu.Unlock()
	if time.Now().Before(retry) {
		return nil, fmt.Errorf("the data link of %s failed recently; not retried before %s", node, retry.Format(time.TimeOnly))
	}
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: connectTimeout}, Config: l.client}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if ctx.Err() == nil {
			l.mu.Lock()
			l.unreachable[node] = time.Now().Add(unreachableFor)
			l.mu.Unlock()
		}
		return nil, fmt.Errorf("dialling the data link of %s at %s: %w", node, addr, err)
	}
	conn := c.(*tls.Conn)
	fail := func(err error) (*Sender, error) {
		conn.NetConn().Close()
		return nil, fmt.Errorf("data link to %s: %w", node, err)
	}
	// ClientTLS verified the chain; it must also be the node the session came from.
	if name, _, err := pki.NodeIdentity(conn.ConnectionState().PeerCertificates[0]); err != nil || name != node {
		return fail(fmt.Errorf("the server is node %q (%v), not %s", name, err, node))
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.NetConn().SetDeadline(time.Unix(1, 0)) })
	defer stop()
	hello := append(magic[:], token[:]...)
	if _, err := conn.Write(hello); err != nil {
		return fail(err)
	}
	var got [1]byte
	if _, err := io.ReadFull(conn, got[:]); err != nil || got[0] != ack {
		return fail(fmt.Errorf("not accepted (%v)", err))
	}
	if !stop() {
		return fail(ctx.Err())
	}
	secret, err := linkSecret(conn, token)
	if err != nil {
		return fail(err)
	}
	return &Sender{conn: conn.NetConn(), seal: newSealer(secret)}, nil
}

// Sender writes the chunks of one link.
type Sender struct {
	// conn is the TCP connection under TLS: records go on it directly.
	conn net.Conn
	seal *sealer
}

// ReadFrom sends what it reads from r, each read as one chunk, until r ends (nil) or fails.
// Reads go straight into the buffer that is sealed in place and written in one call.
func (s *Sender) ReadFrom(r io.Reader) (int64, error) {
	var sent int64
	for {
		n, err := r.Read(s.seal.payload())
		if n > 0 {
			record, serr := s.seal.seal(n, false)
			if serr != nil {
				return sent, serr
			}
			if _, werr := s.conn.Write(record); werr != nil {
				return sent, fmt.Errorf("sending on the data link: %w", werr)
			}
			sent += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return sent, nil
		}
		if err != nil {
			return sent, err
		}
	}
}

// Close ends the stream cleanly and closes the connection.
func (s *Sender) Close() error {
	record, err := s.seal.seal(0, true)
	if err == nil {
		_, err = s.conn.Write(record)
	}
	if err != nil {
		s.Abort()
		return fmt.Errorf("ending the data link: %w", err)
	}
	// No TLS close_notify: TLS no longer owns the stream, and the receiver stops reading at
	// the end marker.
	return s.conn.Close()
}

// Abort closes the connection without ending the stream: the receiver sees an error. It may
// be called while ReadFrom blocks in a write, to end it, and more than once.
func (s *Sender) Abort() { s.conn.Close() }
