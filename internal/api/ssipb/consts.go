package ssipb

// ProtocolVersion is the node-to-node capability number. Bump it when agents must behave
// differently towards older peers, and add a line to the history below, so that mixed versions
// during a rolling upgrade are handled on purpose.
//
//	1 (2026-11-25): Join, Ping; gossip metadata carries the load vector.
const ProtocolVersion = 1

// Exit statuses a Run session ends with that ssi gives itself rather than the command, as ssh
// does.
const (
	// ExitLostNode: the node running the command was lost.
	ExitLostNode = 255
	// ExitStartFailed: the command could not be started (e.g. no such directory).
	ExitStartFailed = 1
	// ExitOutputFailed: the client's stdout can no longer be written because its reader went
	// away; that of a local command killed by SIGPIPE (13).
	ExitOutputFailed = 128 + 13
	// ExitOutputError: writing the client's stdout failed otherwise (a full disk, /dev/full, an
	// I/O error); that of a local command such as yes or cat, which reports the error and exits 1.
	ExitOutputError = 1
)

// The numbers of RunOutput's stdout and stderr fields: output travels as frames of one of
// these bytes fields, handled without decoding the whole message (api.Frame).
const (
	RunOutputStdoutField = 2
	RunOutputStderrField = 3
)
