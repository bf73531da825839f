package cli

import (
	"testing"

	"github.com/ssi-cluster/ssi/internal/api/jobsrpc"
	"github.com/ssi-cluster/ssi/internal/api/ssirpc"
)

// The CLI names the methods it calls itself, so as not to link gRPC: they must be the
// services' own.
func TestMethodNames(t *testing.T) {
	for _, tc := range []struct{ ours, theirs string }{
		{methodNodes, ssirpc.Control_Nodes_FullMethodName},
		{methodStatus, ssirpc.Control_Status_FullMethodName},
		{methodCreateToken, ssirpc.Control_CreateToken_FullMethodName},
		{methodRun, ssirpc.Control_Run_FullMethodName},
		{methodPs, ssirpc.Control_Ps_FullMethodName},
		{methodKill, ssirpc.Control_Kill_FullMethodName},
		{methodWait, ssirpc.Control_Wait_FullMethodName},
		{methodFiles, ssirpc.Control_Files_FullMethodName},
		{methodSubmit, jobsrpc.Jobs_Submit_FullMethodName},
		{methodInteractive, jobsrpc.Jobs_Interactive_FullMethodName},
		{methodList, jobsrpc.Jobs_List_FullMethodName},
		{methodShow, jobsrpc.Jobs_Show_FullMethodName},
		{methodHistory, jobsrpc.Jobs_History_FullMethodName},
		{methodCancel, jobsrpc.Jobs_Cancel_FullMethodName},
		{methodHold, jobsrpc.Jobs_Hold_FullMethodName},
		{methodRelease, jobsrpc.Jobs_Release_FullMethodName},
		{methodCreateQueue, jobsrpc.Jobs_CreateQueue_FullMethodName},
		{methodListQueues, jobsrpc.Jobs_ListQueues_FullMethodName},
		{methodRemoveQueue, jobsrpc.Jobs_RemoveQueue_FullMethodName},
		{methodDrain, jobsrpc.Jobs_Drain_FullMethodName},
		{methodResume, jobsrpc.Jobs_Resume_FullMethodName},
	} {
		if tc.ours != tc.theirs {
			t.Errorf("the CLI calls %s, the service serves %s", tc.ours, tc.theirs)
		}
	}
}
