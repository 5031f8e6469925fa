"""ketamine-cds: a CDS Hooks 2.0 service screening for ketamine and esketamine treatment."""
