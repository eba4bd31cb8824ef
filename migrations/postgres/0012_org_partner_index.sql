-- A partner's view lists and counts its orgs (issue 15): by owner, not by a scan of all orgs.
-- PostgreSQL twin of migrations/sqlite/0010_org_partner_index.sql.
CREATE INDEX orgs_partner ON orgs(partner_id, id);
