"""Each RPC as a plan: validate the request against the loaded pipeline, build the call, run
it, write the file."""
