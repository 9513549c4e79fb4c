package logical_test

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/logical-go/logical"
	"github.com/logical-go/logical/logicaltest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// between returns the text of file between the line holding begin and the
// next line holding end, without those lines, trimmed of blank lines.
func between(t *testing.T, file, begin, end string) string {
	t.Helper()
	buf, err := os.ReadFile(file)
	require.NoError(t, err)
	text := string(buf)
	i := strings.Index(text, begin)
	require.GreaterOrEqual(t, i, 0, "%s has no %q", file, begin)
	text = text[i:]
	text = text[strings.IndexByte(text, '\n')+1:]
	j := strings.Index(text, end)
	require.GreaterOrEqual(t, j, 0, "%s has no %q after %q", file, end, begin)
	text = text[:j]
	text = text[:strings.LastIndexByte(text, '\n')+1]
	return strings.Trim(text, "\n")
}

// TestReadmeDialect keeps the README's sample dialect identical to the one
// in example_test.go, and runs the conformance kit on it.
func TestReadmeDialect(t *testing.T) {
	sample := between(t, "example_test.go", "// README begin", "// README end")
	readme := between(t, "README.md", "## A dialect in 30 lines", "```\n\nRun it")
	readme = strings.TrimPrefix(readme, "```go\n")
	assert.Equal(t, sample, readme, "README.md's \"A dialect in 30 lines\" must be example_test.go's dialect, verbatim")

	list := make([]string, 30)
	for i := range list {
		list[i] = "word" + strconv.Itoa(i)
	}
	logicaltest.RunDialect(t, func(logicaltest.TB) logical.Dialect { return &words{list: list} })
}
