package layerio

import (
	"hash"
	"io"
)

// readAhead decompresses (and hashes) a layer in a goroutine of its own, a
// few buffers ahead of its reader, so that the source's decompression and
// its diffID are off the critical path of the conversion that parses it:
// on a layer's one stream they are as much CPU as the parse and copy, and
// could only run in turn with them before.
type readAhead struct {
	full chan *aheadBuffer // decompressed, in order
	free chan *aheadBuffer
	stop chan struct{}
	done chan struct{}
	cur  *aheadBuffer
	off  int
	err  error // the stream's end (io.EOF) or failure, once cur holds it
}

type aheadBuffer struct {
	b   []byte
	n   int
	err error
}

// The read-ahead holds aheadBuffers buffers of aheadBufferSize: 1 MiB per
// conversion.
const (
	aheadBuffers    = 4
	aheadBufferSize = 256 << 10
)

// newReadAhead starts reading r, writing what it yields to h.
func newReadAhead(r io.Reader, h hash.Hash) *readAhead {
	ra := &readAhead{
		full: make(chan *aheadBuffer, aheadBuffers), free: make(chan *aheadBuffer, aheadBuffers),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	for range aheadBuffers {
		ra.free <- &aheadBuffer{b: make([]byte, aheadBufferSize)}
	}
	go ra.run(r, h)
	return ra
}

func (ra *readAhead) run(r io.Reader, h hash.Hash) {
	defer close(ra.done)
	for {
		var buf *aheadBuffer
		select {
		case buf = <-ra.free:
		case <-ra.stop:
			return
		}
		buf.n, buf.err = 0, nil
		for buf.n < len(buf.b) && buf.err == nil {
			var n int
			n, buf.err = r.Read(buf.b[buf.n:])
			buf.n += n
		}
		h.Write(buf.b[:buf.n])
		ra.full <- buf // never blocks: at most aheadBuffers are out
		if buf.err != nil {
			return
		}
	}
}

// Read yields what the goroutine read, in order, and then its error.
func (ra *readAhead) Read(p []byte) (int, error) {
	for ra.cur == nil || ra.off == ra.cur.n {
		if ra.err != nil {
			return 0, ra.err
		}
		if ra.cur != nil {
			ra.free <- ra.cur
		}
		ra.cur, ra.off = <-ra.full, 0
		if ra.cur.err != nil {
			ra.err = ra.cur.err
		}
	}
	n := copy(p, ra.cur.b[ra.off:ra.cur.n])
	ra.off += n
	if ra.off == ra.cur.n && ra.err != nil {
		return n, ra.err
	}
	return n, nil
}
