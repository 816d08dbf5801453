package rules

// A key is what one job converts: a source image name in a namespace, by one
// rule (named by its tag suffix). At most one job per key runs at a time.
type key struct {
	namespace, source, suffix string
}

// state is where a key is in its life. A key with no state is idle: nothing
// is queued or running for it, and what it last did is on the images'
// labels, not in memory, so that the engine's memory is bounded by the
// queue and the workers.
type state int

const (
	// idle: nothing to do (the zero state; idle keys are not kept).
	idle state = iota
	// queued: waiting in the queue for a worker.
	queued
	// running: a worker runs the job.
	running
	// rerun: running, and triggered again meanwhile (the tag may have
	// moved): queued again as soon as the run ends, whatever its result.
	rerun
	// waiting: failed transiently; queued again when its backoff ends.
	waiting
)

func (s state) String() string {
	return [...]string{"idle", "queued", "running", "rerun", "waiting"}[s]
}

// input is what happens to a key.
type input int

const (
	// triggered: an event, a notification or reconcile asks for the key.
	triggered input = iota
	// started: a worker took the key from the queue.
	started
	// finished: the run ended (converted, already current, stale, gone,
	// or failed for good).
	finished
	// failedTransiently: the run failed in a way a retry may mend, and
	// retries are left.
	failedTransiently
	// backedOff: the backoff after a transient failure ended.
	backedOff
)

func (i input) String() string {
	return [...]string{"triggered", "started", "finished", "failed transiently", "backed off"}[i]
}

// transition is a key's next state; ok is false for an input the state does
// not take (a bug in the engine, which leaves the state as it is).
//
//	idle    --triggered--> queued (if the queue has room; else dropped, and reconcile finds it)
//	queued  --triggered--> queued (one job per key waits)
//	queued  --started----> running
//	running --triggered--> rerun
//	running --finished---> idle
//	running --failed-----> waiting
//	rerun   --triggered--> rerun
//	rerun   --finished---> queued (the newer trigger runs)
//	rerun   --failed-----> queued (likewise, at once)
//	waiting --triggered--> waiting (the retry resolves the name again anyway)
//	waiting --backed off-> queued
func transition(s state, in input) (next state, ok bool) {
	switch {
	case s == idle && in == triggered:
		return queued, true
	case s == queued && in == triggered:
		return queued, true
	case s == queued && in == started:
		return running, true
	case s == running && in == triggered, s == rerun && in == triggered:
		return rerun, true
	case s == running && in == finished:
		return idle, true
	case s == running && in == failedTransiently:
		return waiting, true
	case s == rerun && (in == finished || in == failedTransiently):
		return queued, true
	case s == waiting && in == triggered:
		return waiting, true
	case s == waiting && in == backedOff:
		return queued, true
	}
	return s, false
}
