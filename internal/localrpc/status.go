package localrpc

import (
	"context"
	"errors"
	"strconv"
)

// Code is a call's status code, in gRPC's numbering (the agent's handlers return gRPC
// statuses, which travel as they are).
type Code uint32

// The codes, as gRPC numbers them.
const (
	OK                 Code = 0
	Canceled           Code = 1
	Unknown            Code = 2
	InvalidArgument    Code = 3
	DeadlineExceeded   Code = 4
	NotFound           Code = 5
	AlreadyExists      Code = 6
	PermissionDenied   Code = 7
	ResourceExhausted  Code = 8
	FailedPrecondition Code = 9
	Aborted            Code = 10
	OutOfRange         Code = 11
	Unimplemented      Code = 12
	Internal           Code = 13
	Unavailable        Code = 14
	DataLoss           Code = 15
	Unauthenticated    Code = 16
)

var codeNames = [...]string{
	"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
	"AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
	"OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
}

func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "Code(" + strconv.FormatUint(uint64(c), 10) + ")"
}

// Error is a call's failure: the status the agent sent, or one the client made up for a
// failure of its own (Canceled, DeadlineExceeded, Unavailable, Internal), as gRPC does.
type Error struct {
	Code    Code
	Message string
}

// Error returns the message alone, as the agent wrote it for the user.
func (e *Error) Error() string { return e.Message }

// CodeOf returns the code of err: OK for nil, Unknown for errors other than *Error.
func CodeOf(err error) Code {
	if err == nil {
		return OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return Unknown
}

// contextError is the status of a call whose context ended.
func contextError(err error) *Error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Code: DeadlineExceeded, Message: err.Error()}
	}
	return &Error{Code: Canceled, Message: err.Error()}
}
