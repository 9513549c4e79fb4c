package pglogical

import (
	"context"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/pkg/errors"
	"github.com/sirupsen/logrus"
)

// relation follows a Relation message: it learns which table a relation
// id is, notices tables that joined a publication, and brings the target
// table's columns in line with the source's.
func (g *snapGate) relation(ctx context.Context, p *processor, m *pglogrepl.RelationMessage) error {
	name := m.Namespace + "." + m.RelationName
	t := g.tables[name]
	if t == nil {
		// Joined a publication since the last look.
		if err := g.poll(ctx, p); err != nil {
			return err
		}
		if t = g.tables[name]; t == nil {
			return nil // not listed as published: streamed as it comes
		}
	}
	g.rels[m.RelationID] = t
	if t.fresh() {
		return nil // the copy makes the target's columns match
	}
	return g.columns(ctx, p, t, m)
}

// columns compares the columns a Relation message announces with the ones
// last seen and with the target's. A new column is added to the target
// (and, if the source fills existing rows with a default, the table is
// copied again); a column that disappeared while the target still has it
// (dropped or renamed at the source), or whose type changed while the
// target's did not, is an error that says what to do: the loop retries
// and goes on once the target matches.
func (g *snapGate) columns(ctx context.Context, p *processor, t *snapTable, m *pglogrepl.RelationMessage) error {
	target := g.target(p, t)
	have, ok, err := g.cfg.Store.Columns(ctx, target)
	if err != nil {
		return err
	}
	if !ok {
		return errors.Errorf("pglogical: target table %s of %s does not exist", target, t.name)
	}
	prev := make(map[string]srcColumn, len(t.spec.Columns))
	for _, c := range t.spec.Columns {
		prev[c.Name] = c
	}
	now := make(map[string]bool, len(m.Columns))
	for _, c := range m.Columns {
		now[c.Name] = true
	}
	for _, c := range t.spec.Columns {
		if _, kept := have[c.Name]; now[c.Name] || !kept {
			continue
		}
		return errors.Errorf("pglogical: the source no longer sends column %q of %s (dropped or renamed there): "+
			"drop or rename column %q of the target table %s to match; replication goes on once it does",
			c.Name, t.name, c.Name, target)
	}
	var src *pgx.Conn
	defer func() {
		if src != nil {
			src.Close(context.Background())
		}
	}()
	source := func() (*pgx.Conn, error) {
		if src == nil {
			c, err := pgx.Connect(ctx, g.d.cfg.SourceConn)
			if err != nil {
				return nil, errors.Wrap(err, "pglogical: connecting to the source")
			}
			src = c
		}
		return src, nil
	}
	changed := len(m.Columns) != len(t.spec.Columns)
	recopy := false
	cols := make([]srcColumn, 0, len(m.Columns))
	for _, c := range m.Columns {
		sc := srcColumn{Name: c.Name, OID: c.DataType, Mod: c.TypeModifier}
		old, seen := prev[c.Name]
		if seen && old.OID == sc.OID && old.Mod == sc.Mod {
			sc.Type = old.Type
			cols = append(cols, sc)
			continue
		}
		changed = true
		conn, err := source()
		if err != nil {
			return err
		}
		if err := conn.QueryRow(ctx, `SELECT format_type($1::oid, $2::int)`, sc.OID, sc.Mod).Scan(&sc.Type); err != nil {
			return errors.Wrapf(err, "pglogical: naming the type of column %q of %s", c.Name, t.name)
		}
		typ, at := have[c.Name]
		switch {
		case seen && at && typ != sc.Type:
			return errors.Errorf("pglogical: column %q of %s changed type at the source from %s to %s: "+
				"change it at the target too (ALTER TABLE %s ALTER COLUMN %s TYPE %s); replication goes on once it does",
				c.Name, t.name, old.Type, sc.Type, target, quoteIdent(c.Name), sc.Type)
		case seen && at:
			// The target was changed to match; the source rewrote its
			// rows, so they are copied again.
			recopy = true
		case !at:
			g.log.WithFields(logrus.Fields{"table": target.String(), "column": c.Name, "type": sc.Type}).Info("adding column")
			if err := p.quiesce(ctx); err != nil { // ALTER TABLE waits for the group's locks
				return err
			}
			if err := g.cfg.Store.AddColumn(ctx, target, c.Name, sc.Type); err != nil {
				return err
			}
			var filled bool
			err := conn.QueryRow(ctx, `SELECT coalesce((
				SELECT a.atthasmissing OR EXISTS (SELECT 1 FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum)
				  FROM pg_catalog.pg_attribute a
				 WHERE a.attrelid = $1::regclass AND a.attname = $2 AND NOT a.attisdropped), true)`,
				quoteIdent(t.schema)+"."+quoteIdent(t.rel), c.Name).Scan(&filled)
			if err != nil {
				return errors.Wrapf(err, "pglogical: reading the default of column %q of %s", c.Name, t.name)
			}
			// Existing rows got the default at the source without a
			// row change the stream would carry.
			recopy = recopy || filled
		}
		cols = append(cols, sc)
	}
	if changed {
		t.spec.Columns = cols
		if err := g.saveSpec(ctx, t); err != nil {
			return err
		}
	}
	if !recopy {
		return nil
	}
	if t.round != nil {
		t.again = true // after the round that is waiting
		return nil
	}
	conn, err := source()
	if err != nil {
		return err
	}
	g.log.WithField("table", t.name).Info("copying the table again after a schema change")
	if err := g.plan(ctx, conn, t); err != nil {
		return err
	}
	return g.poll(ctx, p)
}
