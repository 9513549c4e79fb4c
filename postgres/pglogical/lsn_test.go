package pglogical

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/logical-go/logical"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLSNText(t *testing.T) {
	tcs := []struct {
		in   string
		pos  uint64
		fail bool
	}{
		{in: "0/16B3748", pos: 0x16B3748},
		{in: "1/0", pos: 1 << 32},
		{in: "FFFFFFFF/FFFFFFFF", pos: ^uint64(0)},
		{in: "0/0", pos: 0},
		{in: "16B3748", fail: true},
		{in: "x/1", fail: true},
		{in: "1/100000000", fail: true},
		{in: "", fail: true},
	}
	for _, tc := range tcs {
		t.Run(tc.in, func(t *testing.T) {
			var l LSN
			err := l.UnmarshalText([]byte(tc.in))
			if tc.fail {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.pos, l.Pos)
			assert.Equal(t, tc.in, l.String())
		})
	}
}

func TestLSNJSONRoundTrip(t *testing.T) {
	in := LSN{Pos: 0x1_0000_00FF, Time: time.Date(2024, 5, 6, 7, 8, 9, 1000, time.UTC)}
	buf, err := json.Marshal(in)
	require.NoError(t, err)
	assert.JSONEq(t, `{"lsn":"1/FF","time":"2024-05-06T07:08:09.000001Z"}`, string(buf))

	out := new(LSN)
	require.NoError(t, json.Unmarshal(buf, out))
	assert.Equal(t, in.Pos, out.Pos)
	assert.True(t, in.Time.Equal(out.Time))

	bare := new(LSN)
	require.NoError(t, json.Unmarshal([]byte(`"0/10"`), bare))
	assert.Equal(t, uint64(16), bare.Pos)

	assert.Error(t, json.Unmarshal([]byte(`{"lsn":"nope"}`), new(LSN)))
}

func TestLSNOrder(t *testing.T) {
	a, b := LSN{Pos: 1}, &LSN{Pos: 2}
	assert.Equal(t, -1, logical.Compare(a, b))
	assert.Equal(t, 1, logical.Compare(b, a))
	assert.Equal(t, 0, logical.Compare(a, LSN{Pos: 1, Time: time.Now()}))
	assert.Equal(t, uint64(2), b.AsOffset())
}

func TestFormatLSNMatchesSprintf(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	values := []uint64{0, 1, 0xF, 0x10, 1 << 32, 1<<32 - 1, ^uint64(0), 0xABCDEF0123456789}
	for range 1000 {
		values = append(values, r.Uint64()>>r.IntN(64))
	}
	for _, v := range values {
		require.Equal(t, fmt.Sprintf("%X/%X", v>>32, uint32(v)), FormatLSN(v))
	}
}
