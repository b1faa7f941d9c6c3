// compose-check loads a Compose file with the Compose Specification's own loader
// (github.com/compose-spec/compose-go/v2, the library `docker compose` validates and
// interpolates with) and prints the resolved model as JSON, or the loader's error.
//
//	compose-check [--env-file FILE]... [--project-directory DIR] [COMPOSE_FILE]
//
// Interpolation follows `docker compose --env-file A --env-file B config`: variables come
// from this process's environment first, then from the env files in order (a later file
// wins over an earlier one, the environment over both); no `.env` is read. The model is
// checked against the Compose schema (unknown keys fail), interpolated (`${VAR:?msg}`
// fails when VAR is unset), normalised, checked for consistency (depends_on, volumes and
// networks name things that exist), and relative host paths are resolved against the
// project directory (default: the Compose file's folder).
//
// Output on success (exit 0), one JSON object on stdout:
//
//	{"project": <the resolved model>, "variables": {NAME: {default, required, ...}}}
//
// "variables" lists every variable the file references (the loader's template package),
// with whether any reference marks it required. Any loader warning is printed to stderr
// and fails the run (exit 1), as does a load error; usage errors exit 2.
// Built by stack/install.sh (part compose-check); run by tests/integration/test_compose.py.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/template"
	"github.com/sirupsen/logrus"
	"go.yaml.in/yaml/v4"
)

type envFiles []string

func (e *envFiles) String() string     { return strings.Join(*e, ",") }
func (e *envFiles) Set(v string) error { *e = append(*e, v); return nil }

type variable struct {
	Default  string `json:"default"`
	Presence string `json:"presence"`
	Required bool   `json:"required"`
}

// warnings counts what the loader logs at warning level or above (obsolete keys, ...).
type warnings struct{ n int }

func (w *warnings) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}
func (w *warnings) Fire(*logrus.Entry) error { w.n++; return nil }

func fail(code int, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "compose-check: "+format+"\n", args...)
	os.Exit(code)
}

func main() {
	var files envFiles
	var projectDir string
	flag.Var(&files, "env-file", "env file for interpolation (repeatable; later files win)")
	flag.StringVar(&projectDir, "project-directory", "", "project directory (default: the Compose file's folder)")
	flag.Parse()
	if flag.NArg() > 1 {
		fail(2, "one Compose file at most, got %v", flag.Args())
	}
	file := "docker-compose.yml"
	if flag.NArg() == 1 {
		file = flag.Arg(0)
	}
	file, err := filepath.Abs(file)
	if err != nil {
		fail(2, "%v", err)
	}
	if projectDir == "" {
		projectDir = filepath.Dir(file)
	}
	w := &warnings{}
	logrus.SetOutput(os.Stderr)
	logrus.AddHook(w)

	opts, err := cli.NewProjectOptions([]string{file},
		cli.WithWorkingDirectory(projectDir),
		cli.WithOsEnv,
		cli.WithEnvFiles(files...),
		cli.WithDotEnv,
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		fail(1, "%v", err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fail(1, "%v", err)
	}
	if w.n > 0 {
		fail(1, "%d loader warning(s), see above", w.n)
	}
	model, err := project.MarshalJSON()
	if err != nil {
		fail(1, "marshal: %v", err)
	}

	raw, err := os.ReadFile(file)
	if err != nil {
		fail(1, "%v", err)
	}
	var dict map[string]any
	if err := yaml.Unmarshal(raw, &dict); err != nil {
		fail(1, "%v", err)
	}
	vars := map[string]variable{}
	for name, v := range template.ExtractVariables(dict, template.DefaultPattern) {
		vars[name] = variable{Default: v.DefaultValue, Presence: v.PresenceValue, Required: v.Required}
	}
	out, err := json.Marshal(map[string]any{"project": json.RawMessage(model), "variables": vars})
	if err != nil {
		fail(1, "marshal: %v", err)
	}
	fmt.Println(string(out))
}
