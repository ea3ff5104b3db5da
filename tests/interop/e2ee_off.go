//go:build !goolm

package main

// encryption needs mautrix-go's Olm, which without the goolm build tag is
// libolm through cgo; run.sh builds with -tags goolm (pure Go).
type encryption struct{}

func encryptedSteps(scenarioParams, *side, *side, string) []step {
	return []step{{
		name: "encrypted exchange across servers",
		skip: "built without -tags goolm (mautrix-go's pure Go Olm), as run.sh builds it",
	}}
}
