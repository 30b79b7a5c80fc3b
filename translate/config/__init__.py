"""Config: the schemas of every command's settings (dataclasses in Hydra's ConfigStore) and the rules
their values obey.  Above data and models (the rules name their choices), below everything that reads a
run's stored config; data and models themselves never see a config object, only its fields."""
