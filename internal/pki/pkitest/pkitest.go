// Package pkitest makes cluster CAs and node certificates for the tests of packages that
// connect nodes to each other.
package pkitest

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/ssi-cluster/ssi/internal/pki"
)

// CA makes a cluster CA for clusterID.
func CA(t testing.TB, clusterID string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(clusterID)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// Node makes the key pair of a server node called name, signed by ca for an hour, with
// 127.0.0.1 among its addresses.
func Node(t testing.TB, ca *pki.CA, name string) tls.Certificate {
	t.Helper()
	key, keyPEM, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(key, name)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.SignNode(csr, name, pki.RoleServer, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := pki.NodeKeyPair(certPEM, keyPEM, ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}
