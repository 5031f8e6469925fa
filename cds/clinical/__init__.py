"""Clinical knowledge and the screening engine: rules, value sets, site policy, dosing, cards. Pure."""
