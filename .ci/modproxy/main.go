// Command modproxy writes a file-system Go module proxy holding this
// repository's modules at one version, as a release tagged at that version
// would publish them. It lets .ci/install-check prove that
//
//	go install github.com/logical-go/logical/postgres/cmd/pgreplicate@VERSION
//
// works for a user who has nothing but a module proxy: no workspace, no
// replace directive, only what the modules' own go.mod files say.
//
// A release sets the requirements between the repository's modules to the
// tag it is about to create; modproxy does the same in the go.mod files it
// publishes (the placeholder version the workspace replaces becomes
// VERSION) and leaves everything else as committed.
//
// Usage: go run ./.ci/modproxy -version v0.1.0 -out DIR [module dir...]
package main

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// placeholder is the version at which the modules require each other
// between releases; the root go.work replaces it with the directories.
const placeholder = "v0.0.0-00010101000000-000000000000"

var moduleLine = regexp.MustCompile(`(?m)^module\s+(\S+)`)

func main() {
	version := flag.String("version", "v0.1.0", "the version to publish")
	out := flag.String("out", "", "the proxy directory to write (GOPROXY=file://DIR)")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "modproxy: -out is required")
		os.Exit(2)
	}
	dirs := flag.Args()
	if len(dirs) == 0 {
		dirs = []string{".", "metrics", "postgres"}
	}
	for _, dir := range dirs {
		if err := publish(dir, *version, *out); err != nil {
			fmt.Fprintf(os.Stderr, "modproxy: %s: %v\n", dir, err)
			os.Exit(1)
		}
	}
}

// publish writes the module in dir at version into the proxy at out.
func publish(dir, version, out string) error {
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return err
	}
	m := moduleLine.FindSubmatch(gomod)
	if m == nil {
		return fmt.Errorf("go.mod has no module line")
	}
	path := string(m[1])
	if bytes.Contains(gomod, []byte("\nreplace")) {
		return fmt.Errorf("go.mod of %s has a replace directive, which go install refuses", path)
	}
	gomod = bytes.ReplaceAll(gomod, []byte(placeholder), []byte(version))

	at := filepath.Join(out, escape(path), "@v")
	if err := os.MkdirAll(at, 0o755); err != nil {
		return err
	}
	info, _ := json.Marshal(map[string]string{"Version": version, "Time": time.Now().UTC().Format(time.RFC3339)})
	files := map[string][]byte{
		"list":            []byte(version + "\n"),
		version + ".info": info,
		version + ".mod":  gomod,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(at, name), data, 0o644); err != nil {
			return err
		}
	}
	return writeZip(filepath.Join(at, version+".zip"), dir, path+"@"+version, gomod)
}

// writeZip writes the module zip: every file of the module under
// prefix/, except nested modules, hidden directories and testdata-free
// junk a release would not carry; go.mod is the rewritten one.
func writeZip(name, dir, prefix string, gomod []byte) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	defer f.Close()
	zw := zip.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			if rel == "." {
				return nil
			}
			if strings.HasPrefix(d.Name(), ".") || strings.HasPrefix(d.Name(), "_") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
				return filepath.SkipDir // a module of its own
			}
			return nil
		}
		if !d.Type().IsRegular() || rel == "go.work" || rel == "go.work.sum" {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if rel == "go.mod" {
			data = gomod
		}
		w, err := zw.Create(prefix + "/" + filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		_, err = w.Write(data)
		return err
	})
	if err != nil {
		return err
	}
	return zw.Close()
}

// escape is the module proxy's case encoding: each upper-case letter
// becomes '!' and its lower-case form.
func escape(path string) string {
	var b strings.Builder
	for _, r := range path {
		if 'A' <= r && r <= 'Z' {
			b.WriteByte('!')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}
