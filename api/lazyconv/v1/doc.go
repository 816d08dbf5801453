// Package lazyconvv1 is lazyconv's conversion API (converter.proto): the
// generated protobuf and gRPC code, committed (make protos regenerates it),
// and ReceiveConvert, which drains a Convert stream for clients.
package lazyconvv1
