//go:build !cgo

package main

import (
	"errors"
	"fmt"
)

// sociSection needs cgo (soci-snapshotter's zTOC builder).
func sociSection(string, []workload, int) error {
	fmt.Println("\nSOCI: skipped, this build has no cgo (the soci format needs it)")
	return nil
}

func sociChild(string, string, []generated) error {
	return errors.New("the soci format needs a build with cgo")
}
