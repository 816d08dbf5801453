package service

import (
	"time"

	"github.com/opencontainers/go-digest"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/converter"
)

// wireStates maps each layer state to its wire value by name, never by
// position, so that reordering either enum cannot change what a client reads.
var wireStates = map[converter.LayerState]api.LayerState{
	converter.StateQueued:     api.LayerState_LAYER_STATE_QUEUED,
	converter.StateReading:    api.LayerState_LAYER_STATE_READING,
	converter.StateConverting: api.LayerState_LAYER_STATE_CONVERTING,
	converter.StateCommitted:  api.LayerState_LAYER_STATE_COMMITTED,
	converter.StateCached:     api.LayerState_LAYER_STATE_CACHED,
	converter.StateKept:       api.LayerState_LAYER_STATE_KEPT,
	converter.StateFailed:     api.LayerState_LAYER_STATE_FAILED,
	converter.StateFetching:   api.LayerState_LAYER_STATE_FETCHING,
	converter.StateRebuilding: api.LayerState_LAYER_STATE_REBUILDING,
	converter.StateShared:     api.LayerState_LAYER_STATE_SHARED,
	converter.StateVerifying:  api.LayerState_LAYER_STATE_VERIFYING,
}

var localStates = func() map[api.LayerState]converter.LayerState {
	out := make(map[api.LayerState]converter.LayerState, len(wireStates))
	for l, w := range wireStates {
		out[w] = l
	}
	return out
}()

// wireState is a layer state as the API sends it.
func wireState(s converter.LayerState) api.LayerState { return wireStates[s] }

// localState is a layer state the API sent, as converter.LayerState
// (StateQueued for a value this client does not know).
func localState(s api.LayerState) converter.LayerState { return localStates[s] }

// LayerEvent is a layer's progress as the API sends it.
func LayerEvent(st converter.LayerStatus) *api.LayerProgress {
	return &api.LayerProgress{
		Digest: st.Digest.String(), Size: st.Size, State: wireState(st.State),
		BytesIn: st.BytesIn, BytesOut: st.BytesOut,
		OutputDigest: st.Output.String(), OutputSize: st.OutSize, ElapsedNs: int64(st.Elapsed), NotLossless: st.NotLossless,
		Origin: st.Origin, Verified: st.Verified,
	}
}

// LayerStatus turns a progress event back into a converter.LayerStatus.
func LayerStatus(p *api.LayerProgress) converter.LayerStatus {
	return converter.LayerStatus{
		Digest: digest.Digest(p.GetDigest()), Size: p.GetSize(), State: localState(p.GetState()),
		BytesIn: p.GetBytesIn(), BytesOut: p.GetBytesOut(),
		Output: digest.Digest(p.GetOutputDigest()), OutSize: p.GetOutputSize(), Elapsed: time.Duration(p.GetElapsedNs()),
		NotLossless: p.GetNotLossless(), Origin: p.GetOrigin(), Verified: p.GetVerified(),
	}
}
