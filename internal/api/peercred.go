package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Caller is the identity of a local client as reported by the kernel for its socket.
type Caller struct {
	PID int32
	UID uint32
	GID uint32
}

// IsRoot reports whether the caller is the superuser.
func (c Caller) IsRoot() bool { return c.UID == 0 }

// callerAuthInfo carries a Caller through gRPC's AuthInfo.
type callerAuthInfo struct {
	credentials.CommonAuthInfo
	caller Caller
	passed *passedOutput // the client's stdout and stderr, if it passed them (see PassOutput)
}

func (callerAuthInfo) AuthType() string { return "peercred" }

// PeerCredentials returns transport credentials for a Unix-socket server that record each
// client's SO_PEERCRED identity. Nothing travels in the clear beyond the local machine.
func PeerCredentials() credentials.TransportCredentials { return peerCreds{} }

type peerCreds struct{}

func (peerCreds) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, callerAuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (peerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if h, ok := conn.(*handshakenConn); ok {
		// ServeLocal read the identity and the output preamble already.
		return h.Conn, h.info, nil
	}
	caller, err := peerCaller(conn)
	if err != nil {
		return nil, nil, err
	}
	info := callerAuthInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		caller:         caller,
	}
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return conn, info, nil
	}
	out, err := receiveOutput(uc)
	if err != nil {
		return nil, nil, err
	}
	if out == nil {
		return conn, info, nil
	}
	info.passed = &passedOutput{out: out}
	return &outputConn{UnixConn: uc, passed: info.passed}, info, nil
}

// peerCaller returns the kernel's record of who opened conn (SO_PEERCRED): the only source
// of a local client's identity.
func peerCaller(conn net.Conn) (Caller, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return Caller{}, fmt.Errorf("peer credentials need a unix socket, got %T", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return Caller{}, fmt.Errorf("reading peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Caller{}, fmt.Errorf("reading peer credentials: %w", err)
	}
	if credErr != nil {
		return Caller{}, fmt.Errorf("reading peer credentials: %w", credErr)
	}
	return Caller{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}
func (p peerCreds) Clone() credentials.TransportCredentials { return p }
func (peerCreds) OverrideServerName(string) error           { return nil }

// ErrNoCaller is returned when a request did not arrive over a peer-credential socket.
var ErrNoCaller = errors.New("no kernel-verified caller on this connection")

// CallerFrom returns the kernel-verified identity of the local client that made the request.
func CallerFrom(ctx context.Context) (Caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Caller{}, ErrNoCaller
	}
	info, ok := p.AuthInfo.(callerAuthInfo)
	if !ok {
		return Caller{}, ErrNoCaller
	}
	return info.caller, nil
}
