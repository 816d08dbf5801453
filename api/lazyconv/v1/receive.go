package lazyconvv1

import (
	"errors"
	"io"

	"google.golang.org/grpc"
)

// ReceiveConvert reads a Convert stream to its end, passing every event to
// onEvent (when not nil), and returns the result the stream ended with (nil
// if it sent none). Errors are the stream's, still in their gRPC form.
func ReceiveConvert(stream grpc.ServerStreamingClient[ConvertEvent], onEvent func(*ConvertEvent) error) (*ConvertResult, error) {
	var result *ConvertResult
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return result, nil
		}
		if err != nil {
			return nil, err
		}
		if r := ev.GetResult(); r != nil {
			result = r
		}
		if onEvent != nil {
			if err := onEvent(ev); err != nil {
				return nil, err
			}
		}
	}
}
