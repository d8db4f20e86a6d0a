"""Where ``sync_mode: false`` outputs wait for their download: one protocol (:mod:`.base`), in
process (:mod:`.memory`), in Redis (:mod:`.redis`) or in S3-compatible storage (:mod:`.s3`)."""
