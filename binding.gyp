{
  "targets": [
    {
      "target_name": "fsx",
      "sources": ["src/native/fsx.c", "src/native/crc32.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
