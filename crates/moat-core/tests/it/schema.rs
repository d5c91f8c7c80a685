//! The committed JSON Schema of moat.yaml must match the one generated from the types.

#[test]
fn committed_schema_is_fresh() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/moat.schema.json");
    let generated = moat_core::config::schema();
    if std::env::var_os("MOAT_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/moat.schema.json is stale; regenerate it with \
         `MOAT_UPDATE_SCHEMA=1 cargo test -p moat-core --test it schema` and commit it"
    );
}
