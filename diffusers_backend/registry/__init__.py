"""The dynamic pipeline loader's parts; ``diffusers_dynamic_loader`` (repo root) is its
public face. Import-light: listing pipelines needs neither torch nor diffusers."""
