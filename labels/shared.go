package labels

// Keys of conversions and access records shared through a registry, as OCI
// referrers of the source manifest.
const (
	// ConvertedFrom is the label on a converted manifest naming the source
	// manifest it was converted from; ConvertedVariant names the variant (the
	// layer variant cache's key). Publishing reads them to know what a pushed
	// manifest is a conversion of.
	ConvertedFrom    = "lazyconv.io/converted-from"
	ConvertedVariant = "lazyconv.io/converted-variant"

	// ConversionArtifactType is the artifactType of a referrer announcing a
	// conversion of its subject.
	ConversionArtifactType = "application/vnd.lazyconv.conversion.v1+json"
	// RecordArtifactType is the artifactType of a referrer holding an access
	// record of its subject (one layer, RecordMediaType).
	RecordArtifactType = "application/vnd.lazyconv.record.v1+json"

	// VariantAnnotation, on a conversion referrer, is the variant the subject
	// was converted to (the same key as the layer variant cache's).
	VariantAnnotation = "lazyconv.io/variant"
	// ConvertedManifestAnnotation, on a conversion referrer, is the digest of
	// the converted manifest, in the same repository.
	ConvertedManifestAnnotation = "lazyconv.io/converted-manifest"
)
