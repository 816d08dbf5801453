// Command socisnapshotter runs soci-snapshotter v0.16.1's snapshotter (its
// service package: the FUSE filesystem and the lazy fetcher) as a
// containerd proxy snapshotter on a unix socket, for the integration
// tests: soci-snapshotter's own command (soci-snapshotter-grpc) is in a
// module of its own that the module proxy here does not serve, so this is
// the same service behind a main of lazyconv's.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/awslabs/soci-snapshotter/config"
	"github.com/awslabs/soci-snapshotter/fs"
	"github.com/awslabs/soci-snapshotter/metadata"
	"github.com/awslabs/soci-snapshotter/service"
	"github.com/awslabs/soci-snapshotter/ztoc"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "", "unix socket to serve the snapshotter on")
	root := flag.String("root", "", "the snapshotter's root directory")
	configPath := flag.String("config", "", "soci-snapshotter's config.toml (optional)")
	flag.Parse()
	if err := run(*address, *root, *configPath); err != nil {
		fmt.Fprintln(os.Stderr, "socisnapshotter:", err)
		os.Exit(1)
	}
}

func run(address, root, configPath string) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	cfg, err := config.NewConfigFromToml(configPath)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	db, err := bolt.Open(filepath.Join(root, "metadata.db"), 0o600, &bolt.Options{NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return err
	}
	defer db.Close()
	store := func(sr *io.SectionReader, toc ztoc.TOC, opts ...metadata.Option) (metadata.Reader, error) {
		return metadata.NewReader(db, sr, toc, opts...)
	}
	sn, err := service.NewSociSnapshotterService(ctx, root, &cfg.ServiceConfig, service.WithFilesystemOptions(fs.WithMetadataStore(store)))
	if err != nil {
		return err
	}
	defer sn.Close()
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	_ = os.Remove(address)
	l, err := net.Listen("unix", address)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); rpc.Stop() }()
	return rpc.Serve(l)
}
