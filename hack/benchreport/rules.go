package main

import (
	"archive/tar"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	// A killed daemon's metadata, read on disk.
	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/plugins/content/local"
	bolt "go.etcd.io/bbolt"

	"github.com/lazyconv/lazyconv/internal/imagegen"
	"github.com/lazyconv/lazyconv/labels"
	"github.com/lazyconv/lazyconv/localstore"
	"github.com/lazyconv/lazyconv/remote"
)

// stormWait bounds each phase's wait for its conversions.
const stormWait = 4 * time.Minute

// rulesSection measures the rules engine under load in containerd-lazyconv:
// an import storm of n small images through a queue of 100, a second storm
// with the daemon killed midway and started again on its root, and a
// notification storm of n pushes to a registry that notifies the daemon.
func rulesSection(work, binDir string, n int) error {
	if n <= 0 || !canRun("rules under load", binDir, "containerd-lazyconv", "ctr", "registry") {
		return nil
	}
	dir, err := os.MkdirTemp("/tmp", "lcr") // short: the sockets' paths are bounded
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Printf("\nrules under load (go run ./hack/benchreport -bin %s -rules-only -rules-images %d): %d one-layer images (a few KiB) per storm, eStargz rule, rule_queue_length = 100, GOMAXPROCS=%d\n",
		binDir, n, n, runtime.GOMAXPROCS(0))
	storms, checks, err := importStorms(work, dir, binDir, n)
	if err != nil {
		return err
	}
	notified, notifyChecks, err := notificationStorm(work, dir, binDir, n)
	if err != nil {
		return err
	}
	fmt.Printf("%-33s %6s %8s %7s %21s %9s %8s %9s\n", "phase", "images", "time", "conv/s", "RSS MB before/peak/after", "queue max", "dropped", "converted")
	for _, r := range append(storms, notified) {
		fmt.Printf("%-33s %6d %7.1fs %7.1f %21s %9.0f %8.0f %9.0f\n", r.name, r.images, r.secs, float64(r.images)/r.secs,
			fmt.Sprintf("%d / %d / %d", r.rssBefore, r.peakMB, r.rssAfter), r.queueMax, r.dropped, r.converted)
	}
	for _, c := range append(checks, notifyChecks...) {
		fmt.Println("  " + c)
	}
	return nil
}

// stormRow is one phase's line of the table.
type stormRow struct {
	name                         string
	images                       int
	secs                         float64
	rssBefore, peakMB, rssAfter  int64
	queueMax, dropped, converted float64
}

// ruleDaemon is a containerd-lazyconv with rules, and its metrics endpoint.
type ruleDaemon struct {
	*containerdProcess
	bin, dir string
	extra    string
	metrics  string
	client   *containerd.Client
}

func startRuleDaemon(bin, dir, extra string) (*ruleDaemon, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	d := &ruleDaemon{bin: bin, dir: dir, metrics: "http://" + addr + "/v1/metrics",
		extra: fmt.Sprintf("required_plugins = [\"io.containerd.grpc.v1.lazyconv\"]\n[plugins.'io.containerd.server.v1.metrics']\n  address = %q\n%s", addr, extra)}
	return d, d.start()
}

func (d *ruleDaemon) start() error {
	p, err := startContainerd(d.bin, d.dir, d.extra)
	if err != nil {
		return err
	}
	d.containerdProcess = p
	d.client, err = containerd.New(p.address, containerd.WithDefaultNamespace("default"))
	if err != nil {
		p.stop()
	}
	return err
}

func (d *ruleDaemon) close() {
	d.client.Close()
	d.stop()
}

// kill SIGKILLs the daemon, keeping its log.
func (d *ruleDaemon) kill() {
	d.client.Close()
	_ = d.cmd.Process.Kill()
	_ = d.cmd.Wait()
	_ = os.Rename(filepath.Join(d.dir, "log"), filepath.Join(d.dir, "log.killed"))
}

// logTail is the end of the daemon's log, for errors.
func (d *ruleDaemon) logTail() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "log"))
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// scrape reads the daemon's metrics: sample (name with labels) to value.
func (d *ruleDaemon) scrape() map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get(d.metrics)
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, m := range regexp.MustCompile(`(?m)^(lazyconv_rule_\S+) (\S+)$`).FindAllSubmatch(body, -1) {
		v, _ := strconv.ParseFloat(string(m[2]), 64)
		out[string(m[1])] = v
	}
	return out
}

// watch samples the daemon's peak RSS and its rule queue's length until the
// returned function is called, which returns both maxima.
func (d *ruleDaemon) watch() func() (int64, float64) {
	peak := peakRSS(d.cmd.Process.Pid)
	var mu sync.Mutex
	var queueMax float64
	stop := every(100*time.Millisecond, func() {
		q := d.scrape()["lazyconv_rule_queue_length"]
		mu.Lock()
		queueMax = max(queueMax, q)
		mu.Unlock()
	})
	return func() (int64, float64) {
		stop()
		return peak(), queueMax
	}
}

const convertedSample = `lazyconv_rule_jobs_total{outcome="converted"}`

// outcomes lists the rule jobs' outcomes a scrape counted.
func outcomes(m map[string]float64) string {
	var out []string
	for _, o := range []string{"converted", "current", "stale", "skipped", "failed", "retried"} {
		if v := m[`lazyconv_rule_jobs_total{outcome="`+o+`"}`]; v > 0 {
			out = append(out, fmt.Sprintf("%s %.0f", o, v))
		}
	}
	return strings.Join(out, ", ")
}

// current counts the images named prefix* (sources: not the outputs) and
// those of them whose -esgz output was converted from their present digest.
func (d *ruleDaemon) current(prefix string) (current, sources int, err error) {
	return countCurrent(context.Background(), d.client.ImageService(), prefix)
}

func countCurrent(ctx context.Context, is images.Store, prefix string) (current, sources int, err error) {
	imgs, err := is.List(namespaces.WithNamespace(ctx, "default"))
	if err != nil {
		return 0, 0, err
	}
	byName := make(map[string]images.Image, len(imgs))
	for _, img := range imgs {
		byName[img.Name] = img
	}
	for _, img := range imgs {
		if !strings.HasPrefix(img.Name, prefix) || strings.HasSuffix(img.Name, "-esgz") {
			continue
		}
		sources++
		if out, ok := byName[img.Name+"-esgz"]; ok && out.Labels[labels.ConvertedFromDigest] == img.Target.Digest.String() {
			current++
		}
	}
	return current, sources, nil
}

// currentOnDisk is current, read from the metadata of a daemon that is not
// running (killed).
func (d *ruleDaemon) currentOnDisk(prefix string) (int, error) {
	root := filepath.Join(d.dir, "root")
	bdb, err := bolt.Open(filepath.Join(root, "io.containerd.metadata.v1.bolt", "meta.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return 0, err
	}
	defer bdb.Close()
	cs, err := local.NewStore(filepath.Join(root, "io.containerd.content.v1.content"))
	if err != nil {
		return 0, err
	}
	cur, _, err := countCurrent(context.Background(), metadata.NewImageStore(metadata.NewDB(bdb, cs, nil)), prefix)
	return cur, err
}

// waitCurrent polls until the want sources named prefix* are all there and
// have a current output (or until says so, or progress stalls), and
// returns how many have.
func (d *ruleDaemon) waitCurrent(prefix string, want int, poll time.Duration, until func(current int) bool) (int, error) {
	return waitProgress(want, poll, func() (int, error) {
		cur, srcs, err := d.current(prefix)
		if srcs < want {
			cur = min(cur, want-1)
		}
		return cur, err
	}, until)
}

// waitProgress polls count until it reaches want, until says so, stormWait
// passes, or, once it has moved, it has not moved for stallWait; it returns
// the last count.
func waitProgress(want int, poll time.Duration, count func() (int, error), until func(int) bool) (int, error) {
	const stallWait = 30 * time.Second
	deadline, first := time.Now().Add(stormWait), -1
	var moved time.Time // zero until the count first moves
	for last := -1; ; {
		n, err := count()
		if err != nil {
			return 0, err
		}
		if first < 0 {
			first = n
		}
		if n != last && n != first {
			moved = time.Now()
		}
		last = n
		if n >= want || (until != nil && until(n)) || time.Now().After(deadline) || (!moved.IsZero() && time.Since(moved) > stallWait) {
			return n, nil
		}
		time.Sleep(poll)
	}
}

// settle waits (up to a minute) until the rule queue is empty and no job
// has ended for 3 s, so that the counts scraped next are final, and returns
// the scrape.
func (d *ruleDaemon) settle() map[string]float64 {
	jobs := func(m map[string]float64) float64 {
		var n float64
		for k, v := range m {
			if strings.HasPrefix(k, "lazyconv_rule_jobs_total") {
				n += v
			}
		}
		return n
	}
	m := d.scrape()
	for deadline, since := time.Now().Add(time.Minute), time.Now(); time.Now().Before(deadline); {
		time.Sleep(500 * time.Millisecond)
		next := d.scrape()
		if jobs(next) != jobs(m) || next["lazyconv_rule_queue_length"] != 0 {
			since = time.Now()
		}
		m = next
		if time.Since(since) >= 3*time.Second {
			break
		}
	}
	return m
}

// stormArchive writes n small images of their own content, named
// prefix%04d:v1 from from, into one OCI archive.
func stormArchive(path, prefix string, from, n int) error {
	return imagegen.WriteOCIArchiveFiles(path, stormImageList(prefix, from, n)...)
}

func stormImageList(prefix string, from, n int) []imagegen.Image {
	imgs := make([]imagegen.Image, 0, n)
	for i := from; i < from+n; i++ {
		body := make([]byte, 3<<10) // incompressible: the gzip layer is about as large
		var seed [32]byte
		binary.LittleEndian.PutUint64(seed[:], uint64(i))
		_, _ = rand.NewChaCha8(seed).Read(body)
		layer := imagegen.TarBytes([]imagegen.Entry{{Header: tar.Header{Name: "id", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: time.Unix(1700000000, 0)}, Body: body}})
		imgs = append(imgs, imagegen.Image{Name: fmt.Sprintf("%s%04d:v1", prefix, i),
			Layers: []imagegen.Layer{{MediaType: ocispec.MediaTypeImageLayerGzip, Blob: imagegen.Compress(layer, "gzip")}}})
	}
	return imgs
}

// rulesConfig is the lazyconv table of the daemons below: a queue of 100,
// reconcile at start and when the queue drains (hourly otherwise), and one
// eStargz rule matching match, with more of its keys; table adds a table
// (notifications) before the rule.
func rulesConfig(match, table, more string) string {
	return fmt.Sprintf("[plugins.'io.containerd.grpc.v1.lazyconv']\n  rule_queue_length = 100\n  reconcile_interval = \"1h\"\n%s"+
		"[[plugins.'io.containerd.grpc.v1.lazyconv'.rules]]\n  match = %q\n  format = \"estargz\"\n  tag_suffix = \"-esgz\"\n%s", table, match, more)
}

// importStorms runs the import storm and the killed storm in one daemon.
func importStorms(work, dir, binDir string, n int) ([]stormRow, []string, error) {
	a, b := filepath.Join(work, "storm-a.tar"), filepath.Join(work, "storm-b.tar")
	if err := stormArchive(a, "example.com/storm/a", 0, n); err != nil {
		return nil, nil, err
	}
	if err := stormArchive(b, "example.com/storm/b", n, n); err != nil {
		return nil, nil, err
	}
	d, err := startRuleDaemon(filepath.Join(binDir, "containerd-lazyconv"), filepath.Join(dir, "storm"), rulesConfig("example.com/storm/*", "", ""))
	if err != nil {
		return nil, nil, err
	}
	defer func() { d.close() }()
	ctr := func(archive string) error {
		out, err := exec.Command(filepath.Join(binDir, "ctr"), "--address", d.address, "-n", "default", "images", "import", archive).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ctr images import %s: %v: %s", filepath.Base(archive), err, out)
		}
		return nil
	}
	var checks []string

	// 1. The import storm.
	rssBefore := int64(rssMB(d.cmd.Process.Pid))
	watch := d.watch()
	start := time.Now()
	if err := ctr(a); err != nil {
		return nil, nil, err
	}
	imported := time.Since(start).Seconds()
	cur, err := d.waitCurrent("example.com/storm/a", n, 250*time.Millisecond, nil)
	secs := time.Since(start).Seconds()
	peak, queueMax := watch()
	if err != nil {
		return nil, nil, err
	}
	m := d.settle()
	first := stormRow{name: "1 import storm (one ctr import)", images: n, secs: secs, rssBefore: rssBefore, peakMB: peak,
		rssAfter: int64(rssMB(d.cmd.Process.Pid)), queueMax: queueMax,
		dropped: m["lazyconv_rule_jobs_dropped_total"], converted: m[convertedSample]}
	checks = append(checks, fmt.Sprintf("import storm: %s: %d of %d sources current; each converted exactly once (converted == %d): %s; the import took %.1fs; jobs: %s",
		passFail(cur == n && m[convertedSample] == float64(n)), cur, n, n, passFail(m[convertedSample] == float64(n)), imported, outcomes(m)))

	// 2. A second storm, the daemon SIGKILLed once ~20 % of it is converted.
	rssBefore = int64(rssMB(d.cmd.Process.Pid))
	watch = d.watch()
	done := make(chan error, 1)
	start = time.Now()
	go func() { done <- ctr(b) }()
	polled, err := d.waitCurrent("example.com/storm/", 2*n, 50*time.Millisecond, func(cur int) bool { return cur >= n+n/5 })
	if err != nil {
		return nil, nil, err
	}
	before := d.scrape()
	peak, queueMax = watch()
	d.kill()
	importErr := <-done
	atKill, err := d.currentOnDisk("example.com/storm/") // exact, unlike the last poll
	if err != nil {
		return nil, nil, err
	}
	restart := time.Now()
	if err := d.start(); err != nil {
		return nil, nil, err
	}
	watch = d.watch()
	_, srcs, err := d.current("example.com/storm/b")
	if err != nil {
		return nil, nil, err
	}
	reimported := ""
	if srcs < n { // the kill cut the import short: import again, as its user would
		reimported = fmt.Sprintf("; the kill cut the import short at %d of %d images (%v), imported again after the restart", srcs, n, importErr)
		if err := ctr(b); err != nil {
			return nil, nil, err
		}
	}
	cur, err = d.waitCurrent("example.com/storm/", 2*n, 250*time.Millisecond, nil)
	recovered := time.Since(restart).Seconds()
	secs = time.Since(start).Seconds()
	peak2, queueMax2 := watch()
	if err != nil {
		return nil, nil, err
	}
	m = d.settle()
	// The restarted daemon's counters start at 0. Exactly once: the first
	// process converted what was current at the kill (its metadata says
	// which), the restarted one the rest.
	beforeKill, afterKill := float64(atKill-n), m[convertedSample]
	second := stormRow{name: "2 second storm, SIGKILL, restart", images: n, secs: secs, rssBefore: rssBefore, peakMB: max(peak, peak2),
		rssAfter: int64(rssMB(d.cmd.Process.Pid)), queueMax: max(queueMax, queueMax2),
		dropped: before["lazyconv_rule_jobs_dropped_total"] + m["lazyconv_rule_jobs_dropped_total"], converted: beforeKill + afterKill}
	checks = append(checks, fmt.Sprintf("killed storm: %s: %d of %d sources current %.1fs after the restart (%.1fs after the import began); killed with %.0f of the storm's outputs current (metadata on disk; last poll %d, last scrape %.0f), the restarted daemon converted %.0f: each converted exactly once (%.0f + %.0f == %d): %s%s; jobs before the kill: %s; after: %s",
		passFail(cur == 2*n && beforeKill+afterKill == float64(n)), cur, 2*n, recovered, secs, beforeKill, polled-n, before[convertedSample]-float64(n), afterKill,
		beforeKill, afterKill, n, passFail(beforeKill+afterKill == float64(n) && before[convertedSample]-float64(n) <= beforeKill), reimported, outcomes(before), outcomes(m)))
	lease, orphans, err := d.leftovers()
	if err != nil {
		return nil, nil, err
	}
	checks = append(checks, fmt.Sprintf("after the kill: no lease labelled %s left: %s; after a GC every blob reachable from an image: %s",
		labels.LeaseConverting, passFail(lease == ""), orphans))
	if lease != "" {
		checks = append(checks, "  left: "+lease)
	}
	if cur != 2*n || first.converted != float64(n) {
		checks = append(checks, "daemon log (end):\n"+d.logTail())
	}
	return []stormRow{first, second}, checks, nil
}

func passFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// leftovers lists the conversion leases left, collects garbage, and says
// whether every blob left is reachable from an image (through containerd's
// GC reference labels), and what else holds those that are not.
func (d *ruleDaemon) leftovers() (string, string, error) {
	ctx := namespaces.WithNamespace(context.Background(), "default")
	lm := d.client.LeasesService()
	ls, err := lm.List(ctx)
	if err != nil {
		return "", "", err
	}
	var converting []string
	leased := map[digest.Digest]string{}
	for _, l := range ls {
		if v, ok := l.Labels[labels.LeaseConverting]; ok {
			converting = append(converting, fmt.Sprintf("%s (%s)", l.ID, v))
		}
		rs, err := lm.ListResources(ctx, l)
		if err != nil {
			return "", "", err
		}
		for _, r := range rs {
			if r.Type == "content" {
				leased[digest.Digest(r.ID)] = l.ID
			}
		}
	}
	// Deleting a lease synchronously waits for a collection.
	gcLease, err := lm.Create(ctx, leases.WithRandomID())
	if err != nil {
		return "", "", err
	}
	if err := lm.Delete(ctx, gcLease, leases.SynchronousDelete); err != nil {
		return "", "", err
	}
	cs := d.client.ContentStore()
	imgs, err := d.client.ImageService().List(ctx)
	if err != nil {
		return "", "", err
	}
	reached := map[digest.Digest]bool{}
	var missing int
	stack := make([]digest.Digest, 0, len(imgs))
	for _, img := range imgs {
		stack = append(stack, img.Target.Digest)
	}
	for len(stack) > 0 {
		dg := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if reached[dg] {
			continue
		}
		reached[dg] = true
		info, err := cs.Info(ctx, dg)
		if err != nil {
			missing++
			continue
		}
		for k, v := range info.Labels {
			if strings.HasPrefix(k, "containerd.io/gc.ref.content") {
				stack = append(stack, digest.Digest(v))
			}
		}
	}
	var blobs, byLease, orphans int
	err = cs.Walk(ctx, func(info content.Info) error {
		blobs++
		switch {
		case reached[info.Digest]:
		case leased[info.Digest] != "":
			byLease++
		default:
			orphans++
		}
		return nil
	})
	if err != nil {
		return "", "", err
	}
	text := fmt.Sprintf("%s (%d blobs; %d held only by a lease, as ctr's import cut short holds its blobs; %d held by nothing; %d referenced but missing)",
		passFail(orphans == 0 && missing == 0), blobs, byLease, orphans, missing)
	return strings.Join(converting, ", "), text, nil
}

// notificationStorm pushes n small images to a registry that notifies a
// fresh containerd-lazyconv, whose pushing rule converts each and pushes the
// output back, and measures the time until the registry has every output.
func notificationStorm(work, dir, binDir string, n int) (stormRow, []string, error) {
	const token = "lazyconv-bench-token"
	notify, err := freeAddr()
	if err != nil {
		return stormRow{}, nil, err
	}
	// As integration/notifications_test.go configures it: manifest pushes
	// only, 10 s per delivery, a 1 s backoff after 3 failures.
	host, stopRegistry, err := startRegistry(filepath.Join(binDir, "registry"), filepath.Join(dir, "registry"), fmt.Sprintf(
		"notifications:\n  endpoints:\n    - {name: lazyconv, url: \"http://%s/notifications\", headers: {Authorization: [\"Bearer %s\"]}, "+
			"timeout: 10s, threshold: 3, backoff: 1s, ignoredmediatypes: [application/octet-stream], ignore: {actions: [pull, delete, mount]}}\n", notify, token))
	if err != nil {
		return stormRow{}, nil, err
	}
	defer stopRegistry()
	d, err := startRuleDaemon(filepath.Join(binDir, "containerd-lazyconv"), filepath.Join(dir, "notified"), rulesConfig("127.0.0.1:*/notified/*",
		fmt.Sprintf("[plugins.'io.containerd.grpc.v1.lazyconv'.notifications]\n  address = %q\n  token = %q\n  namespace = \"default\"\n", notify, token),
		"  namespaces = [\"default\"]\n  push = true\n"))
	if err != nil {
		return stormRow{}, nil, err
	}
	defer d.close()

	// The images go from a store of this process straight to the registry,
	// 8 at a time, so that pushing costs the daemon nothing.
	ctx := namespaces.WithNamespace(context.Background(), "push")
	st, err := localstore.Open(ctx, filepath.Join(work, "rules-push"))
	if err != nil {
		return stormRow{}, nil, err
	}
	defer st.Close()
	imgs := stormImageList(host+"/notified/app", 0, n)
	targets := make([]ocispec.Descriptor, n)
	for i, img := range imgs {
		if targets[i], err = imagegen.Store(ctx, st.ContentStore(), st.ImageStore(), img); err != nil {
			return stormRow{}, nil, err
		}
	}
	rssBefore := int64(rssMB(d.cmd.Process.Pid))
	watch := d.watch()
	start := time.Now()
	var g errgroup.Group
	g.SetLimit(8)
	for i, img := range imgs {
		g.Go(func() error {
			pusher, err := remote.RegistryOptions{}.ResolverFor(img.Name).Pusher(ctx, img.Name)
			if err != nil {
				return err
			}
			return remotes.PushContent(ctx, pusher, targets[i], st.ContentStore(), nil, platforms.All, nil)
		})
	}
	if err := g.Wait(); err != nil {
		watch()
		return stormRow{}, nil, fmt.Errorf("pushing: %w", err)
	}
	pushed := time.Since(start).Seconds()
	pending := map[int]bool{}
	for i := range n {
		pending[i] = true
	}
	have, err := waitProgress(n, 500*time.Millisecond, func() (int, error) {
		for i := range pending {
			if registryHas(host, fmt.Sprintf("notified/app%04d", i), "v1-esgz") {
				delete(pending, i)
			}
		}
		return n - len(pending), nil
	}, nil)
	secs := time.Since(start).Seconds()
	peak, queueMax := watch()
	if err != nil {
		return stormRow{}, nil, err
	}
	m := d.settle()
	row := stormRow{name: "3 notification storm (pushes)", images: n, secs: secs, rssBefore: rssBefore, peakMB: peak,
		rssAfter: int64(rssMB(d.cmd.Process.Pid)), queueMax: queueMax,
		dropped: m["lazyconv_rule_jobs_dropped_total"], converted: m[convertedSample]}
	checks := []string{fmt.Sprintf("notification storm: %s: %d of %d outputs in the registry; each converted exactly once (converted == %d): %s; pushing took %.1fs (8 at a time); notified pushes %.0f; jobs: %s",
		passFail(have == n && m[convertedSample] == float64(n)), have, n, n, passFail(m[convertedSample] == float64(n)), pushed, m["lazyconv_rule_notified_pushes_total"], outcomes(m))}
	local, err := d.client.ImageService().List(context.Background())
	if err != nil {
		return stormRow{}, nil, err
	}
	pulled, tagSchema := map[string]bool{}, 0
	for _, img := range local {
		pulled[img.Name] = true
		if _, tag, _ := strings.Cut(strings.TrimPrefix(img.Name, host), ":"); strings.HasPrefix(tag, "sha256-") && strings.HasSuffix(tag, "-esgz") {
			tagSchema++
		}
	}
	var neverPulled []string
	for i := range pending {
		if !pulled[imgs[i].Name] {
			neverPulled = append(neverPulled, fmt.Sprintf("app%04d", i))
		}
	}
	slices.Sort(neverPulled)
	if len(neverPulled) > 0 {
		checks = append(checks, fmt.Sprintf("  %d pushes never converted, never pulled: %s", len(neverPulled), strings.Join(neverPulled, " ")))
	}
	if tagSchema > 0 {
		checks = append(checks, fmt.Sprintf("  %d referrers tag-schema tags (sha256-<digest>, pushed by the rule's own output push) were converted as images, outputs named sha256-<digest>-esgz", tagSchema))
	}
	// What the daemon's log says of the pulls that failed, and whether the
	// registry still redelivers a notification once all is done.
	logText := func() string { b, _ := os.ReadFile(filepath.Join(d.dir, "log")); return string(b) }
	text := logText()
	failed := regexp.MustCompile(`(?m)^.*pulling \S+:(\S+), pushed to its registry.*$`).FindAllStringSubmatch(text, -1)
	var v1, schema, overLimit int
	for _, f := range failed {
		switch {
		case f[1] == "v1":
			v1++
		case strings.HasPrefix(f[1], "sha256-"):
			schema++
		}
		if strings.Contains(f[0], "greater than maximum size") {
			overLimit++
		}
	}
	redelivered := strings.Count(text, "asking for redelivery")
	time.Sleep(3 * time.Second)
	checks = append(checks, fmt.Sprintf("  daemon log: %d failed pulls of notified pushes (%d of v1 tags, %d of sha256- tags; %d over containerd's 4096-byte label limit on containerd.io/distribution.source); %d notifications answered 503 for redelivery, %d more in the 3 s after the storm settled",
		len(failed), v1, schema, overLimit, redelivered, strings.Count(logText(), "asking for redelivery")-redelivered))
	return row, checks, nil
}

// registryHas says whether a registry has a tag (HEAD of its manifest).
func registryHas(host, repo, tag string) bool {
	req, err := http.NewRequest(http.MethodHead, "http://"+host+"/v2/"+repo+"/manifests/"+tag, nil)
	if err != nil {
		return false
	}
	req.Header.Set("Accept", strings.Join([]string{ocispec.MediaTypeImageIndex, ocispec.MediaTypeImageManifest}, ", "))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// freeAddr is a free TCP address on 127.0.0.1.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
