// A module of its own, so that the registry the integration tests run
// (go-containerregistry's) is no dependency of lazyconv's.
module github.com/lazyconv/lazyconv/integration/referrersregistry

go 1.26.8

require github.com/google/go-containerregistry v0.22.1
