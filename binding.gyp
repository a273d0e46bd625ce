{
  "targets": [
    {
      "target_name": "fsx",
      "sources": ["src/native/fsx.c", "src/native/sendfile.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
