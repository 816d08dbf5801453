package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v3"

	api "github.com/lazyconv/lazyconv/api/lazyconv/v1"
	"github.com/lazyconv/lazyconv/internal/convertcmd"
	"github.com/lazyconv/lazyconv/recorder"
	"github.com/lazyconv/lazyconv/remote"
	"github.com/lazyconv/lazyconv/service"
)

func imageOptimizeCommand() *cli.Command {
	return &cli.Command{
		Name:      "optimize",
		Usage:     "convert an image to prioritized eStargz from a record of accessed files (not lossless)",
		ArgsUsage: "SRC DST",
		Description: `Optimized eStargz puts the files a workload reads first in each layer, then the
prefetch landmark, so that a lazy-pulling snapshotter fetches them up front;
layers with no recorded file get the no-prefetch landmark. Entries are reordered,
so unlike 'image convert --estargz' the output is not lossless.

The record (--record-in) is JSON lines in stargz-snapshotter's recorder format:
{"path": "...", "manifestDigest": "...", "layerIndex": N}. An entry's layer index
is honoured; entries without one go to the topmost layer holding the file.

Records travel through the registry as OCI referrers of the source manifest
(artifactType application/vnd.lazyconv.record.v1+json): --record-out-ref REPO
publishes the record as applied in REPO (tagged, if REPO has a tag), and
--record-in-ref REF reads the record REF names, or with "auto" the newest
record referring to the source manifest in the source's repository.`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "record-in", Usage: "record of accessed files (JSON lines)"},
			&cli.BoolFlag{Name: "run", Usage: "record by running the image's entrypoint with runc, watching its files with fanotify (needs root)"},
			&cli.IntFlag{Name: "period", Usage: "with --run: seconds the workload may run", Value: 10},
			&cli.StringFlag{Name: "args", Usage: `with --run: the workload's arguments as a JSON array (default: entrypoint and command)`},
			&cli.StringSliceFlag{Name: "env", Usage: "with --run: K=V added to the workload's environment (repeatable)"},
			&cli.StringFlag{Name: "run-user", Usage: "with --run: run the workload as USER[:GROUP] (default: the image's user, else 65534:65534)"},
			&cli.StringFlag{Name: "run-userns", Usage: "with --run: user namespace for the workload: auto (where the kernel allows one), require or off", Value: "auto"},
			&cli.Int64Flag{Name: "run-pids-limit", Usage: "with --run: processes and threads the workload may have (-1: no limit)", Value: recorder.DefaultPidsLimit},
			&cli.Int64Flag{Name: "run-memory-limit", Usage: "with --run: bytes of memory, swap included, the workload may use (-1: no limit)", Value: recorder.DefaultMemoryLimit},
			&cli.Int64Flag{Name: "run-tmpfs-size", Usage: "with --run: bytes the workload may write to its root filesystem, and the size of its other tmpfs mounts (-1: no limit)", Value: recorder.DefaultTmpfsSize},
			&cli.StringFlag{Name: "record-out", Usage: "write the record as applied (with layer indexes) to FILE"},
			&cli.StringFlag{Name: "record-in-ref", Usage: `read the record from the registry: REF (host/repo:tag or @digest), or "auto" for the newest referring to the source`},
			&cli.StringFlag{Name: "record-out-ref", Usage: "publish the record as applied as a referrer of the source manifest in REPO[:TAG]"},
			&cli.BoolFlag{Name: "reuse", Usage: "keep layers that already are eStargz"},
			&cli.BoolFlag{Name: "oci", Usage: "convert Docker media types to OCI ones"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the new image's digest"},
			convertcmd.RequireLosslessFlag,
			convertcmd.OverwriteFlag,
		}, append(append(optimizedFlags(), registryFlags...), platformFlags...)...),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.Args().Len() != 2 {
				return fmt.Errorf("image optimize takes SRC and DST: %w", errdefs.ErrInvalidArgument)
			}
			src, dst := cmd.Args().Get(0), cmd.Args().Get(1)
			optimized, err := service.LookupFormat(service.FormatEStargzOptimized)
			if err != nil {
				return err
			}
			opts, err := convertcmd.FlagOptions(cmd, optimized)
			if err != nil {
				return err
			}
			sources := 0
			for _, set := range []bool{cmd.Bool("run"), cmd.String("record-in") != "", cmd.String("record-in-ref") != ""} {
				if set {
					sources++
				}
			}
			if sources != 1 {
				return fmt.Errorf("image optimize takes one of --record-in FILE, --record-in-ref REF and --run: %w", errdefs.ErrInvalidArgument)
			}
			var runArgs []string
			if a := cmd.String("args"); a != "" {
				if err := json.Unmarshal([]byte(a), &runArgs); err != nil {
					return fmt.Errorf("--args must be a JSON array of strings: %v: %w", err, errdefs.ErrInvalidArgument)
				}
			}
			var entries []recorder.Entry
			if in := cmd.String("record-in"); in != "" {
				f, err := os.Open(in)
				if err != nil {
					return err
				}
				entries, err = recorder.Read(f)
				f.Close()
				if err != nil {
					return fmt.Errorf("%s: %w", in, err)
				}
			}
			pm, err := platformMatcher(cmd)
			if err != nil {
				return err
			}
			s, err := openSession(ctx, cmd)
			if err != nil {
				return err
			}
			defer s.Close()
			img, err := s.client.ImageService().Get(s.ctx, src)
			if err != nil {
				return err
			}
			if cmd.Bool("run") {
				if !cmd.Bool("quiet") {
					fmt.Fprintf(s.out, "running %s for up to %ds to record the files it reads\n", src, cmd.Int("period"))
				}
				userns, err := recorder.ParseUserNamespaceMode(cmd.String("run-userns"))
				if err != nil {
					return err
				}
				rec, err := recorder.RunAndRecord(s.ctx, s.client.ContentStore(), img.Target, pm, recorder.RunOptions{
					Period: time.Duration(cmd.Int("period")) * time.Second, Args: runArgs, Env: cmd.StringSlice("env"),
					User: cmd.String("run-user"), UserNamespace: userns, PidsLimit: cmd.Int64("run-pids-limit"),
					MemoryLimit: cmd.Int64("run-memory-limit"), TmpfsSize: cmd.Int64("run-tmpfs-size"),
				})
				if err != nil {
					return err
				}
				entries = rec.Entries()
			}
			ix, err := recorder.BuildIndex(s.ctx, s.client.ContentStore(), img.Target, pm)
			if err != nil {
				return err
			}
			if ref := cmd.String("record-in-ref"); ref != "" {
				if entries, err = recordFromRegistry(s, cmd, ref, src, ix); err != nil {
					return err
				}
			}
			perLayer := recorder.PerLayer(ix, entries)
			record, err := appliedRecord(ix, perLayer)
			if err != nil {
				return err
			}
			if out := cmd.String("record-out"); out != "" {
				if err := os.WriteFile(out, record, 0o644); err != nil {
					return err
				}
			}
			if ref := cmd.String("record-out-ref"); ref != "" {
				if err := publishRecord(s, cmd, ref, ix, record); err != nil {
					return err
				}
			}
			req := &api.ConvertRequest{
				Source: src, Target: dst, Format: service.FormatEStargzOptimized, Oci: cmd.Bool("oci"),
				Platforms: cmd.StringSlice("platform"), AllPlatforms: cmd.Bool("all-platforms"),
				Options: opts, PrioritizedManifest: ix.Manifest().String(), Reuse: cmd.Bool("reuse"),
				RequireLossless: cmd.Bool("require-lossless"), Overwrite: cmd.Bool("overwrite"),
			}
			for layer, paths := range perLayer {
				req.Prioritized = append(req.Prioritized, &api.LayerFiles{LayerIndex: int32(layer), Paths: paths})
			}
			sort.Slice(req.Prioritized, func(i, j int) bool { return req.Prioritized[i].LayerIndex < req.Prioritized[j].LayerIndex })
			if !cmd.Bool("quiet") {
				fmt.Fprintf(s.out, "optimizing %s with %d recorded files (the output is not lossless: entries are reordered)\n", src, len(entries))
			}
			return runConvert(s, cmd, req, time.Now())
		},
	}
}

// appliedRecord is the record as applied: every file with its manifest and
// layer, as JSON lines.
func appliedRecord(ix *recorder.Index, perLayer map[int][]string) ([]byte, error) {
	var entries []recorder.Entry
	for layer := 0; layer < ix.Layers(); layer++ {
		for _, p := range perLayer[layer] {
			entries = append(entries, recorder.Entry{Path: p, ManifestDigest: ix.Manifest().String(), LayerIndex: &layer})
		}
	}
	var b bytes.Buffer
	err := recorder.Write(&b, entries)
	return b.Bytes(), err
}

// publishRecord publishes the record as a referrer of the source manifest
// in repo (tagged with repo's tag, if any).
func publishRecord(s *session, cmd *cli.Command, repo string, ix *recorder.Index, record []byte) error {
	src, err := remote.SourceOf(repo)
	if err != nil {
		return err
	}
	tag := ""
	if name, _, _ := strings.Cut(repo, "@"); strings.LastIndex(name, ":") > strings.LastIndex(name, "/") {
		tag = name[strings.LastIndex(name, ":")+1:]
	}
	subject, err := remote.ManifestOf(s.ctx, s.client.ContentStore(), ix.Manifest())
	if err != nil {
		return err
	}
	r := remote.RecordReferrer(subject, record, recorder.MediaType, time.Now())
	desc, err := remote.PublishReferrer(s.ctx, registryOptions(cmd).ResolverFor(repo), src, r, tag)
	if err != nil {
		return fmt.Errorf("publishing the record: %w", err)
	}
	if !cmd.Bool("quiet") {
		fmt.Fprintf(s.out, "published record %s\n", src.Ref(desc.Digest))
	}
	return nil
}

// recordFromRegistry reads the record ref names, or with "auto" the newest
// referring to the source manifest in the source's repository (its name's,
// else where its manifest was pulled from). A record of another manifest
// is refused.
func recordFromRegistry(s *session, cmd *cli.Command, ref, image string, ix *recorder.Index) ([]recorder.Entry, error) {
	if ref == "auto" {
		info, _ := s.client.ContentStore().Info(s.ctx, ix.Manifest())
		sources := remote.Repositories(image, info)
		if len(sources) == 0 {
			return nil, fmt.Errorf("--record-in-ref auto: %s names no registry and its manifest records none: %w", image, errdefs.ErrNotFound)
		}
		var err error
		for _, src := range sources {
			if ref, err = remote.LatestRecord(s.ctx, registryOptions(cmd).ResolverFor(src.Host+"/"+src.Repository), src, ix.Manifest()); err == nil {
				break
			}
		}
		if err != nil {
			return nil, err
		}
	}
	record, subject, err := remote.FetchRecord(s.ctx, registryOptions(cmd).ResolverFor(ref), ref)
	if err != nil {
		return nil, err
	}
	if subject.Digest != ix.Manifest() {
		return nil, fmt.Errorf("the record %s is of manifest %s, not %s's %s: %w", ref, subject.Digest, image, ix.Manifest(), errdefs.ErrInvalidArgument)
	}
	entries, err := recorder.Read(bytes.NewReader(record))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	if !cmd.Bool("quiet") {
		fmt.Fprintf(s.out, "read record %s (%d files)\n", ref, len(entries))
	}
	return entries, nil
}

// optimizedFlags are the options of optimized eStargz (eStargz's own).
func optimizedFlags() []cli.Flag {
	f, err := service.LookupFormat(service.FormatEStargzOptimized)
	if err != nil {
		panic(err) // the table always has it
	}
	return convertcmd.OptionFlags(f)
}
