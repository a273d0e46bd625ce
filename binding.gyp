{
  "targets": [
    {
      "target_name": "fsx",
      "sources": ["src/native/fsx.c", "src/native/commit.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
