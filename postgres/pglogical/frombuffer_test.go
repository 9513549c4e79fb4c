package pglogical

import (
	"bytes"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// chunks is a reader that returns one chunk per Read, as a socket returns
// what has arrived.
type chunks [][]byte

func (c *chunks) Read(p []byte) (int, error) {
	if len(*c) == 0 {
		return 0, io.EOF
	}
	n := copy(p, (*c)[0])
	if (*c)[0] = (*c)[0][n:]; len((*c)[0]) == 0 {
		*c = (*c)[1:]
	}
	return n, nil
}

// TestFromBuffer checks fromBuffer with pgproto3's Frontend, whose
// ReadBufferLen ReadInto relies on: a message that needed a read from the
// network is never taken for one that was buffered whole, so its time of
// receipt is read from the clock.
func TestFromBuffer(t *testing.T) {
	msg := func(data string) []byte {
		out, err := (&pgproto3.CopyData{Data: []byte(data)}).Encode(nil)
		require.NoError(t, err)
		return out
	}
	first, second, third := msg("first"), msg("second message"), msg("third, split over two reads")
	// One read brings the first two messages and the start of the third.
	r := &chunks{bytes.Join([][]byte{first, second, third[:7]}, nil), third[7:], msg("")}
	f := pgproto3.NewFrontend(r, io.Discard)
	for _, want := range []struct {
		data     string
		buffered bool
	}{
		{"first", false}, // read from the network
		{"second message", true},
		{"third, split over two reads", false}, // its end needed a read
		{"", false},
	} {
		before := f.ReadBufferLen()
		m, err := f.Receive()
		require.NoError(t, err)
		cd, ok := m.(*pgproto3.CopyData)
		require.True(t, ok, "%T", m)
		require.Equal(t, want.data, string(cd.Data))
		assert.Equal(t, want.buffered, fromBuffer(before, f.ReadBufferLen(), len(cd.Data)), "%q", want.data)
	}
	assert.False(t, fromBuffer(0, 0, 0))
	assert.False(t, fromBuffer(10, 0, 4), "a buffer that shrank by more than the message was refilled")
}
