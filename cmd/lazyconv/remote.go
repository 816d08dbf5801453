package main

import (
	"context"
	"fmt"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v3"
)

var registryFlags = []cli.Flag{
	&cli.BoolFlag{Name: "plain-http", Usage: "talk HTTP, not HTTPS, to the registry"},
	&cli.StringFlag{Name: "user", Aliases: []string{"u"}, Usage: "registry credentials, USER[:PASSWORD]"},
}

// resolver follows ctr: credentials from --user, plain HTTP with --plain-http
// (and for localhost always).
func resolver(cmd *cli.Command) remotes.Resolver {
	var authOpts []docker.AuthorizerOpt
	if u := cmd.String("user"); u != "" {
		user, pass, _ := strings.Cut(u, ":")
		authOpts = append(authOpts, docker.WithAuthCreds(func(string) (string, string, error) { return user, pass, nil }))
	}
	plain := docker.MatchLocalhost
	if cmd.Bool("plain-http") {
		plain = docker.MatchAllHosts
	}
	hosts := docker.ConfigureDefaultRegistries(
		docker.WithAuthorizer(docker.NewDockerAuthorizer(authOpts...)),
		docker.WithPlainHTTP(plain),
	)
	return docker.NewResolver(docker.ResolverOptions{Hosts: hosts})
}

func imagePullCommand() *cli.Command {
	return &cli.Command{
		Name:      "pull",
		Usage:     "fetch an image's content from a registry (no unpacking: conversion needs only content)",
		ArgsUsage: "REF",
		Flags:     append(append([]cli.Flag{}, registryFlags...), platformFlags...),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.Args().Len() != 1 {
				return fmt.Errorf("image pull takes one REF: %w", errdefs.ErrInvalidArgument)
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
			img, err := s.client.Fetch(s.ctx, cmd.Args().First(), containerd.WithResolver(resolver(cmd)), containerd.WithPlatformMatcher(pm))
			if err != nil {
				return err
			}
			fmt.Fprintf(s.out, "%s %s\n", img.Name, img.Target.Digest)
			return nil
		},
	}
}

func imagePushCommand() *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "push an image to a registry",
		ArgsUsage: "REMOTE [LOCAL]",
		Flags:     append(append([]cli.Flag{}, registryFlags...), platformFlags...),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if n := cmd.Args().Len(); n < 1 || n > 2 {
				return fmt.Errorf("image push takes REMOTE and optionally LOCAL: %w", errdefs.ErrInvalidArgument)
			}
			remote, local := cmd.Args().Get(0), cmd.Args().Get(1)
			if local == "" {
				local = remote
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
			img, err := s.client.ImageService().Get(s.ctx, local)
			if err != nil {
				return err
			}
			if err := s.client.Push(s.ctx, remote, img.Target, containerd.WithResolver(resolver(cmd)), containerd.WithPlatformMatcher(pm)); err != nil {
				return err
			}
			fmt.Fprintf(s.out, "pushed %s %s\n", remote, img.Target.Digest)
			return nil
		},
	}
}
