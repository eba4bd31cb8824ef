-- A partner's view lists and counts its orgs (issue 15): by owner, not by a scan of all orgs.
CREATE INDEX orgs_partner ON orgs(partner_id, id);
