package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// ErrCAMismatch is wrapped by the handshake error of a PinnedTLS connection whose server does not
// hold the CA pinned by the join token.
var ErrCAMismatch = errors.New("cluster CA does not match the join token")

// ServerTLS is the configuration for a node's cluster listener. It presents cert with the CA in
// its chain (so joiners can pin the CA) and verifies a client certificate against ca if one is
// offered. A client without a certificate is let through, because the Join RPC must be reachable
// before the joiner has one; every other RPC checks the caller with PeerNode.
func ServerTLS(ca *x509.Certificate, cert tls.Certificate) *tls.Config {
	return serverTLS(ca, cert, tls.VerifyClientCertIfGiven)
}

// StrictServerTLS is ServerTLS for listeners that have no unauthenticated call, such as etcd's:
// a client must present a valid node certificate to complete the handshake.
func StrictServerTLS(ca *x509.Certificate, cert tls.Certificate) *tls.Config {
	return serverTLS(ca, cert, tls.RequireAndVerifyClientCert)
}

func serverTLS(ca *x509.Certificate, cert tls.Certificate, clientAuth tls.ClientAuthType) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: presented(cert, ca),
		ClientCAs:    pool,
		ClientAuth:   clientAuth,
		// The standard verification has already checked chain, validity and client-auth usage;
		// this refuses certificates the CA may sign in the future for anything but nodes.
		VerifyConnection: func(state tls.ConnectionState) error {
			if len(state.VerifiedChains) == 0 {
				return nil // no client certificate, allowed only by VerifyClientCertIfGiven
			}
			if _, _, err := NodeIdentity(state.VerifiedChains[0][0]); err != nil {
				return fmt.Errorf("refusing client: %w", err)
			}
			return nil
		},
	}
}

// ClientTLS is the configuration for dialling another node. Peers are dialled by address, so
// instead of matching a host name it accepts any valid node certificate from ca that may act as
// a TLS server. It presents cert as the client certificate.
//
// Because the standard verification is replaced, ConnectionState.VerifiedChains stays empty on
// the client side and PeerNode cannot be used there; the handshake itself guarantees the server
// is a node of this cluster.
func ClientTLS(ca *x509.Certificate, cert tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: presented(cert, ca),
		// Host name checking is switched off here and replaced by VerifyConnection below, which
		// does the chain and usage checks the standard verifier would have done.
		InsecureSkipVerify: true,
		VerifyConnection: func(state tls.ConnectionState) error {
			if _, err := verifyServerChain(pool, state.PeerCertificates); err != nil {
				return fmt.Errorf("refusing server: %w", err)
			}
			return nil
		},
	}
}

// presented is the certificate list a config offers: cert with the CA in its chain, or nothing if
// cert is empty (an empty entry would make a client send an empty certificate message anyway).
func presented(cert tls.Certificate, ca *x509.Certificate) []tls.Certificate {
	if len(cert.Certificate) == 0 {
		return nil
	}
	return []tls.Certificate{withCAInChain(cert, ca)}
}

// PinnedTLS is the configuration for joining, before the node has the CA. It accepts the server
// only if the chain it presents contains a CA certificate whose CAHash equals caHash and the
// server's certificate is a node certificate signed by that CA; then it calls onCA with that CA
// certificate (from inside the handshake, once per successful handshake). The config presents no
// client certificate.
func PinnedTLS(caHash string, onCA func(*x509.Certificate)) *tls.Config {
	want := strings.ToLower(caHash)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The server is authenticated by the pin instead of by a trust store and host name.
		InsecureSkipVerify: true,
		VerifyConnection: func(state tls.ConnectionState) error {
			ca, err := pinnedCA(want, state.PeerCertificates)
			if err != nil {
				return err
			}
			pool := x509.NewCertPool()
			pool.AddCert(ca)
			if _, err := verifyServerChain(pool, state.PeerCertificates); err != nil {
				return fmt.Errorf("refusing join server: its certificate does not verify against the pinned CA; the join address is not a server of this cluster: %w", err)
			}
			if onCA != nil {
				onCA(ca)
			}
			return nil
		},
	}
}

// pinnedCA finds the CA certificate with hash want among the chain the server sent after its own
// certificate.
func pinnedCA(want string, chain []*x509.Certificate) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, errors.New("refusing join server: it presented no certificate; check that the join address is an ssi server's cluster address")
	}
	var offered []string
	for _, cert := range chain[1:] {
		if !cert.IsCA || !cert.BasicConstraintsValid {
			continue
		}
		hash := CAHash(cert)
		if hash == want {
			// The pin covers only the public key; the self-signature shows the rest of the
			// certificate (which the joiner will store and trust) was written by the CA key too.
			if err := cert.CheckSignatureFrom(cert); err != nil {
				return nil, fmt.Errorf("refusing join server: the CA certificate it sent has the pinned key but is not signed by it; the join address is not a genuine server of this cluster: %w", err)
			}
			return cert, nil
		}
		offered = append(offered, hash)
	}
	if len(offered) == 0 {
		return nil, fmt.Errorf("%w: the server sent no CA certificate to compare with the pin %s; the join address belongs to another cluster or the token is wrong", ErrCAMismatch, want)
	}
	return nil, fmt.Errorf("%w: the server's CA is %s but the token pins %s; the join address belongs to another cluster or the token is wrong", ErrCAMismatch, strings.Join(offered, ", "), want)
}

// verifyServerChain checks that chain[0] is a node certificate valid now for server
// authentication under a root in roots; chain[1:] may hold the root itself, which is harmless.
func verifyServerChain(roots *x509.CertPool, chain []*x509.Certificate) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, errors.New("the peer presented no certificate; it must present its node certificate")
	}
	leaf := chain[0]
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:     roots,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return nil, fmt.Errorf("node certificate %q is not valid for this cluster: %w", leaf.Subject.CommonName, err)
	}
	if _, _, err := NodeIdentity(leaf); err != nil {
		return nil, err
	}
	return leaf, nil
}

// PeerNode returns the identity of the remote side of a TLS connection from its verified
// certificate chain. Use it on the server side of ServerTLS/StrictServerTLS connections.
func PeerNode(state tls.ConnectionState) (name, role string, err error) {
	if len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0 {
		return "", "", errors.New("peer is not authenticated: it presented no verified node certificate; only joined nodes may call this")
	}
	return NodeIdentity(state.VerifiedChains[0][0])
}
