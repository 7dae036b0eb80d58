// Command sbom-scanner is the end-to-end suite's SBOM generator image: syft, as a library,
// behind BuildKit's SBOM scanner protocol (moby/buildkit docs/attestations/sbom-protocol.md).
//
// BuildKit runs it with the build result's root filesystem mounted read-only at
// $BUILDKIT_SCAN_SOURCE and, when the Dockerfile asks for more scans, other root filesystems in
// the folder $BUILDKIT_SCAN_SOURCE_EXTRAS. For each it writes an in-toto statement whose
// predicate is the SPDX JSON document syft makes, to $BUILDKIT_SCAN_DESTINATION/<name>.spdx.json
// (<name> is the last part of the scanned path); BuildKit fills in the statement's subject and
// attaches it to the image as an attestation.
//
// The filesystems are catalogued as images are (installed packages and binaries, not the
// manifests a source tree would also have), so a Go binary's modules are listed.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/anchore/syft/syft"
	"github.com/anchore/syft/syft/cataloging"
	"github.com/anchore/syft/syft/cataloging/pkgcataloging"
	"github.com/anchore/syft/syft/format/spdxjson"
	"github.com/anchore/syft/syft/source/directorysource"
	// the driver syft's RPM cataloguer reads newer RPM databases with, as syft's CLI links it
	_ "modernc.org/sqlite"
)

const name = "multiarch-e2e-sbom-scanner"

// statement is an in-toto statement without its subject, which BuildKit fills in.
type statement struct {
	Type          string          `json:"_type"`
	PredicateType string          `json:"predicateType"`
	Subject       []any           `json:"subject"`
	Predicate     json.RawMessage `json:"predicate"`
}

func main() {
	source, destination := os.Getenv("BUILDKIT_SCAN_SOURCE"), os.Getenv("BUILDKIT_SCAN_DESTINATION")
	if source == "" || destination == "" {
		fmt.Fprintf(os.Stderr, "%s: BUILDKIT_SCAN_SOURCE and BUILDKIT_SCAN_DESTINATION must be set (BuildKit's SBOM scanner protocol)\n", name)
		os.Exit(2)
	}
	targets := []string{source}
	if extras := os.Getenv("BUILDKIT_SCAN_SOURCE_EXTRAS"); extras != "" {
		// absent or empty: nothing more to scan, as the protocol says
		if entries, err := os.ReadDir(extras); err == nil {
			for _, e := range entries {
				targets = append(targets, filepath.Join(extras, e.Name()))
			}
		}
	}
	ctx := context.Background()
	for _, target := range targets {
		if err := scan(ctx, target, destination); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %s: %v\n", name, target, err)
			os.Exit(1)
		}
	}
}

// scan writes the SPDX statement of the root filesystem at root into destination.
func scan(ctx context.Context, root, destination string) error {
	src, err := directorysource.New(directorysource.Config{Path: root, Base: root})
	if err != nil {
		return err
	}
	defer src.Close()
	cfg := syft.DefaultCreateSBOMConfig().
		WithTool(name, "e2e").
		WithCatalogerSelection(cataloging.NewSelectionRequest().WithDefaults(pkgcataloging.ImageTag))
	sbom, err := syft.CreateSBOM(ctx, src, cfg)
	if err != nil {
		return fmt.Errorf("cataloguing: %w", err)
	}
	encoder, err := spdxjson.NewFormatEncoderWithConfig(spdxjson.DefaultEncoderConfig())
	if err != nil {
		return err
	}
	var doc bytes.Buffer
	if err := encoder.Encode(&doc, *sbom); err != nil {
		return fmt.Errorf("encoding SPDX: %w", err)
	}
	out, err := json.Marshal(statement{
		Type:          "https://in-toto.io/Statement/v0.1",
		PredicateType: "https://spdx.dev/Document",
		Subject:       []any{},
		Predicate:     doc.Bytes(),
	})
	if err != nil {
		return err
	}
	path := filepath.Join(destination, filepath.Base(root)+".spdx.json")
	return os.WriteFile(path, out, 0o644)
}
