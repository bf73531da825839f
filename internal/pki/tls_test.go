package pki

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

type handshakeResult struct {
	serverErr, clientErr error
	serverState          tls.ConnectionState
}

// handshake runs a real TLS handshake over loopback TCP. After its handshake the server writes
// one byte and the client reads it: in TLS 1.3 the client completes its handshake before the
// server has judged the client certificate, so only that read reveals a refusal by the server.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) handshakeResult {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	type serverOutcome struct {
		err   error
		state tls.ConnectionState
	}
	done := make(chan serverOutcome, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			done <- serverOutcome{err: err}
			return
		}
		defer raw.Close()
		conn := tls.Server(raw, serverCfg)
		if err := conn.HandshakeContext(ctx); err != nil {
			done <- serverOutcome{err: err}
			return
		}
		_, err = conn.Write([]byte{1})
		done <- serverOutcome{err: err, state: conn.ConnectionState()}
	}()

	var res handshakeResult
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	conn := tls.Client(raw, clientCfg)
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	res.clientErr = conn.HandshakeContext(ctx)
	if res.clientErr == nil {
		_, res.clientErr = io.ReadFull(conn, make([]byte, 1))
	}
	if res.clientErr != nil {
		_ = conn.Close() // unblock a server still waiting for the client
	}
	out := <-done
	res.serverErr, res.serverState = out.err, out.state
	return res
}

func TestHandshake(t *testing.T) {
	ca := mustCA(t, "cluster")
	// Same cluster id, so the same CA subject: a client offers its certificate to our server
	// and the server has to reject it by signature, not by name.
	sameNameCA := mustCA(t, "cluster")
	foreignCA := mustCA(t, "elsewhere")

	srv := mustNodeCert(t, ca, "srv1", RoleServer)
	cli := mustNodeCert(t, ca, "cli1", RoleClient)
	impostorSrv := mustNodeCert(t, sameNameCA, "srv1", RoleServer)
	impostorCli := mustNodeCert(t, sameNameCA, "cli1", RoleServer)
	foreignCli := mustNodeCert(t, foreignCA, "cli1", RoleServer)
	expiredCli := mustNodeCertAt(t, ca, time.Now().Add(-48*time.Hour), "old-cli", RoleClient, time.Hour)
	expiredSrv := mustNodeCertAt(t, ca, time.Now().Add(-48*time.Hour), "old-srv", RoleServer, time.Hour)
	notANode := mustCustomCert(t, ca, nodeTemplate("web", "acme", RoleServer, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth))
	clientUsageOnly := mustCustomCert(t, ca, nodeTemplate("srv2", "ssi-node", RoleServer, x509.ExtKeyUsageClientAuth))

	leafOnly := srv.pair
	leafOnly.Certificate = leafOnly.Certificate[:1]
	// An impostor that knows the cluster CA certificate (it is public) appends it to a chain
	// whose leaf the CA never signed.
	impostorWithRealCA := impostorSrv.pair
	impostorWithRealCA.Certificate = [][]byte{impostorSrv.pair.Certificate[0], ca.Cert.Raw}

	// A CA certificate with the real CA's public key (so it matches the pin) but fields written
	// and signed by someone else; a joiner must not store it as the cluster CA.
	forgedCATmpl := *ca.Cert
	forgedCATmpl.Subject.CommonName = "forged"
	forgedCADER, err := x509.CreateCertificate(rand.Reader, &forgedCATmpl, foreignCA.Cert, ca.Cert.PublicKey, foreignCA.Key)
	if err != nil {
		t.Fatal(err)
	}
	forgedCAChain := srv.pair
	forgedCAChain.Certificate = [][]byte{srv.pair.Certificate[0], forgedCADER}

	rawServer := func(cert tls.Certificate) *tls.Config {
		return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}}
	}
	// forceClientCert sends cert even when it is not from a CA the server asked for, as an
	// attacker would.
	forceClientCert := func(cert tls.Certificate) *tls.Config {
		return &tls.Config{
			MinVersion:         tls.VersionTLS13,
			InsecureSkipVerify: true,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return &cert, nil
			},
		}
	}

	var (
		pinnedMu sync.Mutex
		pinnedCA *x509.Certificate
	)
	recordCA := func(c *x509.Certificate) {
		pinnedMu.Lock()
		defer pinnedMu.Unlock()
		pinnedCA = c
	}

	tests := []struct {
		name           string
		server, client *tls.Config
		// wantServerErr / wantClientErr: "" for success, "*" for any error, else a substring.
		wantServerErr, wantClientErr string
		wantPeer                     string // "name/role" from PeerNode on the server, "" if unauthenticated
		wantPinned                   bool
		wantMismatch                 bool
	}{
		{
			name:   "same cluster mTLS with ServerTLS",
			server: ServerTLS(ca.Cert, srv.pair), client: ClientTLS(ca.Cert, cli.pair),
			wantPeer: "cli1/client",
		},
		{
			name:   "same cluster mTLS with StrictServerTLS",
			server: StrictServerTLS(ca.Cert, srv.pair), client: ClientTLS(ca.Cert, cli.pair),
			wantPeer: "cli1/client",
		},
		{
			name:   "server peer identity is server role",
			server: StrictServerTLS(ca.Cert, cli.pair), client: ClientTLS(ca.Cert, srv.pair),
			wantPeer: "srv1/server",
		},
		{
			name:   "ServerTLS refuses client cert from another CA",
			server: ServerTLS(ca.Cert, srv.pair), client: ClientTLS(ca.Cert, impostorCli.pair),
			wantServerErr: "*", wantClientErr: "*",
		},
		{
			name:   "StrictServerTLS refuses client cert from another CA",
			server: StrictServerTLS(ca.Cert, srv.pair), client: ClientTLS(ca.Cert, impostorCli.pair),
			wantServerErr: "*", wantClientErr: "*",
		},
		{
			name:   "ServerTLS refuses a forced client cert from a differently named CA",
			server: ServerTLS(ca.Cert, srv.pair), client: forceClientCert(foreignCli.pair),
			wantServerErr: "*", wantClientErr: "*",
		},
		{
			// The client does not offer a certificate the server's CA list excludes, so it
			// arrives unauthenticated and PeerNode refuses it.
			name:   "ServerTLS treats client of differently named CA as unauthenticated",
			server: ServerTLS(ca.Cert, srv.pair), client: ClientTLS(ca.Cert, foreignCli.pair),
		},
		{
			name:   "ServerTLS lets a client without certificate through unauthenticated",
			server: ServerTLS(ca.Cert, srv.pair), client: PinnedTLS(CAHash(ca.Cert), nil),
		},
		{
			name:   "StrictServerTLS refuses a client without certificate",
			server: StrictServerTLS(ca.Cert, srv.pair), client: PinnedTLS(CAHash(ca.Cert), nil),
			wantServerErr: "*", wantClientErr: "*",
		},
		{
			name:   "ClientTLS refuses server cert from another CA",
			server: ServerTLS(sameNameCA.Cert, impostorSrv.pair), client: ClientTLS(ca.Cert, cli.pair),
			wantServerErr: "*", wantClientErr: "refusing server",
		},
		{
			name:   "ServerTLS refuses expired client cert",
			server: ServerTLS(ca.Cert, srv.pair), client: ClientTLS(ca.Cert, expiredCli.pair),
			wantServerErr: "expired", wantClientErr: "*",
		},
		{
			name:   "ClientTLS refuses expired server cert",
			server: ServerTLS(ca.Cert, expiredSrv.pair), client: ClientTLS(ca.Cert, cli.pair),
			wantServerErr: "*", wantClientErr: "expired",
		},
		{
			name:   "ServerTLS refuses a CA-signed cert that is not a node cert",
			server: ServerTLS(ca.Cert, srv.pair), client: ClientTLS(ca.Cert, notANode),
			wantServerErr: "not an ssi node certificate", wantClientErr: "*",
		},
		{
			name:   "ClientTLS refuses a CA-signed server cert that is not a node cert",
			server: ServerTLS(ca.Cert, notANode), client: ClientTLS(ca.Cert, cli.pair),
			wantServerErr: "*", wantClientErr: "not an ssi node certificate",
		},
		{
			name:   "ClientTLS refuses server cert without server-auth usage",
			server: rawServer(clientUsageOnly), client: ClientTLS(ca.Cert, cli.pair),
			wantServerErr: "*", wantClientErr: "usage",
		},
		{
			name:   "ServerTLS refuses TLS 1.2",
			server: ServerTLS(ca.Cert, srv.pair),
			client: func() *tls.Config {
				c := ClientTLS(ca.Cert, cli.pair)
				c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
				return c
			}(),
			wantServerErr: "*", wantClientErr: "*",
		},
		{
			name:   "PinnedTLS accepts the right pin and hands over the CA",
			server: ServerTLS(ca.Cert, srv.pair), client: PinnedTLS(CAHash(ca.Cert), recordCA),
			wantPinned: true,
		},
		{
			name:   "PinnedTLS works when ServerTLS is given only the leaf",
			server: ServerTLS(ca.Cert, leafOnly), client: PinnedTLS(CAHash(ca.Cert), recordCA),
			wantPinned: true,
		},
		{
			name:   "PinnedTLS refuses a wrong pin",
			server: ServerTLS(ca.Cert, srv.pair), client: PinnedTLS(CAHash(foreignCA.Cert), recordCA),
			wantServerErr: "*", wantClientErr: "the join address belongs to another cluster or the token is wrong",
			wantMismatch: true,
		},
		{
			name:   "PinnedTLS refuses a server that sends no CA",
			server: rawServer(leafOnly), client: PinnedTLS(CAHash(ca.Cert), recordCA),
			wantServerErr: "*", wantClientErr: "no CA certificate",
			wantMismatch: true,
		},
		{
			name:   "PinnedTLS refuses an impostor leaf chained to the real CA",
			server: rawServer(impostorWithRealCA), client: PinnedTLS(CAHash(ca.Cert), recordCA),
			wantServerErr: "*", wantClientErr: "does not verify against the pinned CA",
		},
		{
			name:   "PinnedTLS refuses a CA cert with the pinned key not signed by it",
			server: rawServer(forgedCAChain), client: PinnedTLS(CAHash(ca.Cert), recordCA),
			wantServerErr: "*", wantClientErr: "not signed by it",
		},
		{
			name:   "PinnedTLS refuses an expired server cert",
			server: ServerTLS(ca.Cert, expiredSrv.pair), client: PinnedTLS(CAHash(ca.Cert), recordCA),
			wantServerErr: "*", wantClientErr: "expired",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recordCA(nil)
			res := handshake(t, tt.server, tt.client)
			checkErr(t, "server", res.serverErr, tt.wantServerErr)
			checkErr(t, "client", res.clientErr, tt.wantClientErr)
			if tt.wantMismatch && !errors.Is(res.clientErr, ErrCAMismatch) {
				t.Errorf("client error %v does not wrap ErrCAMismatch", res.clientErr)
			}
			if res.clientErr != nil && strings.Contains(res.clientErr.Error(), "\n") {
				t.Errorf("client error spans several lines: %q", res.clientErr)
			}

			pinnedMu.Lock()
			gotPinned := pinnedCA
			pinnedMu.Unlock()
			if tt.wantPinned != (gotPinned != nil) {
				t.Errorf("onCA called: %v; want a call: %v", gotPinned != nil, tt.wantPinned)
			}
			if tt.wantPinned && gotPinned != nil && !gotPinned.Equal(ca.Cert) {
				t.Errorf("onCA got CA %q, not the cluster CA", gotPinned.Subject.CommonName)
			}

			if res.serverErr != nil {
				return
			}
			name, role, err := PeerNode(res.serverState)
			if tt.wantPeer == "" {
				if err == nil {
					t.Errorf("PeerNode = %s/%s; want an unauthenticated peer", name, role)
				}
				return
			}
			if err != nil || name+"/"+role != tt.wantPeer {
				t.Errorf("PeerNode = %q, %q, %v; want %s", name, role, err, tt.wantPeer)
			}
		})
	}
}

func checkErr(t *testing.T, side string, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("%s failed: %v", side, err)
	case want != "" && err == nil:
		t.Errorf("%s succeeded; want an error (%s)", side, want)
	case want != "" && want != "*" && !strings.Contains(err.Error(), want):
		t.Errorf("%s error = %q; want it to contain %q", side, err, want)
	}
}

func TestPeerNodeWithoutVerifiedChain(t *testing.T) {
	ca := mustCA(t, "peer")
	node := mustNodeCert(t, ca, "n1", RoleServer)
	tests := []struct {
		name  string
		state tls.ConnectionState
	}{
		{name: "no certificates", state: tls.ConnectionState{}},
		// A certificate the peer sent but nobody verified must not count.
		{name: "unverified peer certificate", state: tls.ConnectionState{PeerCertificates: []*x509.Certificate{node.cert}}},
		{name: "empty chain", state: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if name, role, err := PeerNode(tt.state); err == nil {
				t.Errorf("PeerNode = %q, %q; want an error", name, role)
			}
		})
	}
}

func TestConfigsRequireTLS13(t *testing.T) {
	ca := mustCA(t, "v13")
	node := mustNodeCert(t, ca, "n1", RoleServer)
	configs := map[string]*tls.Config{
		"ServerTLS":       ServerTLS(ca.Cert, node.pair),
		"StrictServerTLS": StrictServerTLS(ca.Cert, node.pair),
		"ClientTLS":       ClientTLS(ca.Cert, node.pair),
		"PinnedTLS":       PinnedTLS(CAHash(ca.Cert), nil),
	}
	for name, cfg := range configs {
		if cfg.MinVersion != tls.VersionTLS13 {
			t.Errorf("%s MinVersion = %#x; want TLS 1.3", name, cfg.MinVersion)
		}
	}
}
