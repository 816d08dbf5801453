// Command lazyconvd is lazyconv's sidecar for a stock containerd: it serves
// the conversion API on its own unix socket and works on containerd's stores
// as a client (every blob it converts crosses containerd's socket twice, which
// is why the in-daemon plugin is faster).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/log"

	"github.com/lazyconv/lazyconv/service"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	configPath := flag.String("config", "/etc/lazyconv/lazyconvd.toml", "configuration file (TOML); absent means defaults")
	address := flag.String("address", "", "socket to serve on (overrides the config)")
	containerdAddress := flag.String("containerd-address", "", "containerd's socket (overrides the config)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *configPath, *address, *containerdAddress); err != nil {
		fmt.Fprintln(os.Stderr, "lazyconvd:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, configPath, address, containerdAddress string) error {
	cfg, err := loadConfig(configPath)
	if err != nil {
		return err
	}
	if address != "" {
		cfg.Address = address
	}
	if containerdAddress != "" {
		cfg.ContainerdAddress = containerdAddress
	}
	gid, err := cfg.socketGID()
	if err != nil {
		return err
	}
	client, err := containerd.New(cfg.ContainerdAddress)
	if err != nil {
		return fmt.Errorf("connecting to containerd at %s: %w", cfg.ContainerdAddress, err)
	}
	defer client.Close()
	formats, err := cfg.formats(ctx)
	if err != nil {
		return err
	}
	for name, reason := range formats.Skipped {
		log.G(ctx).Warnf("lazyconvd: format %s is unavailable: %v", name, reason)
	}
	svc, err := service.New(client.ContentStore(), client.ImageService(), client.LeasesService(), cfg.Converter, version,
		service.WithSnapshots(func(name string) (snapshots.Snapshotter, error) { return client.SnapshotService(name), nil }, client.DiffService()),
		service.WithFormats(formats))
	if err != nil {
		return err
	}
	nss, err := client.NamespaceService().List(ctx)
	if err != nil {
		return fmt.Errorf("listing containerd's namespaces: %w", err)
	}
	if n, err := service.RecoverLeases(ctx, client.LeasesService(), nss); err != nil {
		return err
	} else if n > 0 {
		log.G(ctx).Infof("dropped %d leases of conversions interrupted by a previous exit", n)
	}

	if _, err := svc.StartRules(ctx, service.RulesEnv{
		Events: client.EventService(), Publisher: client.EventService(),
		Namespaces: func(ctx context.Context) ([]string, error) { return client.NamespaceService().List(ctx) },
	}); err != nil {
		return err
	}

	if err := os.MkdirAll(filepath.Dir(cfg.Address), 0o711); err != nil {
		return err
	}
	l, err := listenSocket(cfg.Address, cfg.SocketMode, gid)
	if err != nil {
		return err
	}
	server := newServer(cfg.AllowedNamespaces)
	if err := svc.Register(server); err != nil {
		l.Close()
		return err
	}
	go func() {
		<-ctx.Done()
		server.GracefulStop()
	}()
	served := "every namespace"
	if len(cfg.AllowedNamespaces) > 0 {
		served = "namespaces " + strings.Join(cfg.AllowedNamespaces, ", ")
	}
	log.G(ctx).Infof("lazyconvd %s serving %s on %s (mode %04o), converting in containerd at %s",
		version, served, cfg.Address, cfg.SocketMode, cfg.ContainerdAddress)
	return server.Serve(l)
}
