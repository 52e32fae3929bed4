//! One lake file being written: JSON Lines, CSV (optionally gzip) or Parquet.
//!
//! A file is written to a temporary path and only [`FileEncoder::finish`]ed (flushed, footer
//! written, synced) when its segment rolls; the caller then renames or uploads it.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use arrow_array::{
    ArrayRef, RecordBatch,
    builder::{
        BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
        TimestampMillisecondBuilder,
    },
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::{arrow::ArrowWriter, file::properties::WriterProperties};
use serde::{Deserialize, Serialize};

use super::schema::{Cell, ColType, Columns, check_inferable, read_row};
use crate::error::{Error, Result};

/// The lake's file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jsonl,
    Csv,
    Parquet,
}

/// Compression: `gzip` for JSON Lines and CSV (the whole file), `snappy` or `zstd` for Parquet
/// (per page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Zstd,
}

impl Format {
    /// The file name extension, compression included.
    pub fn extension(self, compression: Compression) -> &'static str {
        match (self, compression) {
            (Format::Jsonl, Compression::Gzip) => "jsonl.gz",
            (Format::Jsonl, _) => "jsonl",
            (Format::Csv, Compression::Gzip) => "csv.gz",
            (Format::Csv, _) => "csv",
            (Format::Parquet, _) => "parquet",
        }
    }

    pub fn check(self, compression: Compression) -> std::result::Result<(), String> {
        match (self, compression) {
            (_, Compression::None)
            | (Format::Jsonl | Format::Csv, Compression::Gzip)
            | (Format::Parquet, Compression::Snappy | Compression::Zstd) => Ok(()),
            (format, compression) => Err(format!(
                "compression {} does not apply to {} files (JSON Lines and CSV: none or gzip; \
                 Parquet: none, snappy or zstd)",
                format!("{compression:?}").to_lowercase(),
                format!("{format:?}").to_lowercase()
            )),
        }
    }
}

/// The formats one lake sink writes side by side: `format = "csv"`, or a list,
/// `format = ["jsonl", "csv", "parquet"]` (the randomuser tutorial's three outputs), each file
/// set then written once in every format, under the same names with their own extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formats(Vec<Format>);

impl Formats {
    pub fn one(format: Format) -> Formats {
        Formats(vec![format])
    }

    pub fn iter(&self) -> impl Iterator<Item = Format> + '_ {
        self.0.iter().copied()
    }

    /// The compression `format` is written with. One format takes `compression` as it is
    /// ([`Formats::check`] refuses a mismatch). Among several, `compression` applies to the
    /// formats it fits, and the others keep their usual default: none for JSON Lines and CSV,
    /// snappy for Parquet.
    pub fn compression(&self, format: Format, compression: Compression) -> Compression {
        if self.0.len() == 1 || format.check(compression).is_ok() {
            compression
        } else if format == Format::Parquet {
            Compression::Snappy
        } else {
            Compression::None
        }
    }

    pub fn check(&self, compression: Compression) -> std::result::Result<(), String> {
        let Some(first) = self.0.first() else {
            return Err("format is an empty list: name at least one of jsonl, csv, parquet".into());
        };
        if self
            .0
            .iter()
            .enumerate()
            .any(|(i, f)| self.0[..i].contains(f))
        {
            return Err("format lists a format twice".into());
        }
        if self.0.len() == 1 {
            return first.check(compression);
        }
        if self.0.iter().all(|f| f.check(compression).is_err()) {
            return Err(format!(
                "compression {} fits none of the formats (JSON Lines and CSV: none or gzip; \
                 Parquet: none, snappy or zstd)",
                format!("{compression:?}").to_lowercase()
            ));
        }
        Ok(())
    }
}

impl From<Format> for Formats {
    fn from(format: Format) -> Formats {
        Formats::one(format)
    }
}

impl Serialize for Formats {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(serializer),
            many => many.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Formats {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        const EXPECTED: &str = "expected \"jsonl\", \"csv\" or \"parquet\", or a list of them";
        let names = match OneOrMany::deserialize(deserializer) {
            Ok(OneOrMany::One(name)) => vec![name],
            Ok(OneOrMany::Many(names)) => names,
            Err(_) => return Err(serde::de::Error::custom(EXPECTED)),
        };
        names
            .iter()
            .map(|name| match name.as_str() {
                "jsonl" => Ok(Format::Jsonl),
                "csv" => Ok(Format::Csv),
                "parquet" => Ok(Format::Parquet),
                other => Err(serde::de::Error::custom(format!(
                    "unknown format {other:?}: {EXPECTED}"
                ))),
            })
            .collect::<std::result::Result<Vec<Format>, D::Error>>()
            .map(Formats)
    }
}

/// How the columns of CSV and Parquet files are decided.
#[derive(Debug, Clone)]
pub enum FileSchema {
    Fixed(Arc<Columns>),
    /// Worked out per file from its records.
    Infer,
}

/// Rows are handed to the Parquet writer in batches of this many.
const BATCH_ROWS: usize = 8192;

/// The output stream: a buffered file, gzip-compressed or not.
enum Out {
    Plain(BufWriter<File>),
    Gzip(flate2::write::GzEncoder<BufWriter<File>>),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::Plain(w) => w.write(buf),
            Out::Gzip(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Plain(w) => w.flush(),
            Out::Gzip(w) => w.flush(),
        }
    }
}

impl Out {
    fn open(path: &Path, gzip: bool) -> std::io::Result<Out> {
        let file = BufWriter::with_capacity(256 * 1024, File::create(path)?);
        Ok(if gzip {
            Out::Gzip(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::default(),
            ))
        } else {
            Out::Plain(file)
        })
    }

    /// Finishes compression, flushes and syncs the file to disk.
    fn close(self) -> std::io::Result<()> {
        let buffered = match self {
            Out::Plain(w) => w,
            Out::Gzip(w) => w.finish()?,
        };
        let file = buffered.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

enum Encoder {
    Jsonl(Out),
    Csv {
        out: Box<csv::Writer<Out>>,
        columns: Arc<Columns>,
        /// Text cells as they are, formula prefixes and all ([`crate::text::csv_cell`]).
        raw: bool,
    },
    Parquet(Box<ParquetEncoder>),
    /// Records held until the file is finished, when its columns are inferred from them.
    Infer(Vec<Vec<u8>>),
}

/// A file being written.
pub struct FileEncoder {
    path: PathBuf,
    format: Format,
    compression: Compression,
    encoder: Option<Encoder>,
    raw_text: bool,
    records: u64,
    /// Bytes of records taken in (not of output, which compression makes unknowable until the
    /// end): what size-based rolling counts.
    bytes_in: u64,
}

impl FileEncoder {
    pub fn create(
        path: &Path,
        format: Format,
        compression: Compression,
        schema: &FileSchema,
    ) -> Result<FileEncoder> {
        let encoder = match (format, schema) {
            (Format::Jsonl, _) => Encoder::Jsonl(open(path, compression)?),
            (_, FileSchema::Infer) => Encoder::Infer(Vec::new()),
            (format, FileSchema::Fixed(columns)) => {
                fixed_encoder(path, format, compression, columns.clone())?
            }
        };
        Ok(FileEncoder {
            path: path.to_path_buf(),
            format,
            compression,
            encoder: Some(encoder),
            raw_text: false,
            records: 0,
            bytes_in: 0,
        })
    }

    /// CSV: write text cells as they are instead of neutralizing formula prefixes.
    pub fn keep_raw_text(mut self, keep: bool) -> FileEncoder {
        self.raw_text = keep;
        if let Some(Encoder::Csv { raw, .. }) = &mut self.encoder {
            *raw = keep;
        }
        self
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// Adds one record. An `Err` is the record's fault (not an object, a field of the wrong
    /// type, a required field missing; with inferred columns, a value the file could not hold:
    /// see [`check_inferable`]): nothing was written and the file is still good. I/O errors are
    /// `Ok(Err(..))`'s opposite: they fail the whole file.
    pub fn push(&mut self, record: &[u8]) -> Result<std::result::Result<(), String>> {
        let io = |path: &Path| Error::io(path.to_path_buf());
        let result = match self.encoder.as_mut() {
            None => return Ok(Err("the file is finished".into())),
            Some(Encoder::Jsonl(out)) => match check_object(record) {
                Err(e) => Err(e),
                Ok(()) => {
                    out.write_all(record)
                        .and_then(|()| out.write_all(b"\n"))
                        .map_err(io(&self.path))?;
                    Ok(())
                }
            },
            Some(Encoder::Csv { out, columns, raw }) => {
                let mut row = Vec::with_capacity(columns.len());
                match read_row(columns, record, &mut row) {
                    Err(e) => Err(e),
                    Ok(()) => {
                        write_csv_row(out, &row, *raw).map_err(|e| csv_error(&self.path, e))?;
                        Ok(())
                    }
                }
            }
            Some(Encoder::Parquet(parquet)) => parquet.push(record)?,
            // Encoded only when the file is finished: what inference or encoding could not take
            // is refused now, alone, instead of failing the whole file then.
            Some(Encoder::Infer(records)) => {
                match check_object(record).and_then(|()| check_inferable(record)) {
                    Err(e) => Err(e),
                    Ok(()) => {
                        records.push(record.to_vec());
                        Ok(())
                    }
                }
            }
        };
        if result.is_ok() {
            self.records += 1;
            self.bytes_in += record.len() as u64 + 1;
        }
        Ok(result)
    }

    /// Writes what is buffered, the Parquet footer, and syncs the file. Returns its path.
    pub fn finish(mut self) -> Result<PathBuf> {
        let path = self.path.clone();
        let encoder = self.encoder.take().expect("finished once");
        finish_encoder(
            encoder,
            &path,
            (self.format, self.compression),
            self.raw_text,
        )?;
        Ok(path)
    }
}

fn finish_encoder(
    encoder: Encoder,
    path: &Path,
    (format, compression): (Format, Compression),
    raw_text: bool,
) -> Result<()> {
    match encoder {
        Encoder::Jsonl(out) => out.close().map_err(Error::io(path)),
        Encoder::Csv { out, .. } => out
            .into_inner()
            .map_err(|e| Error::io(path)(e.into_error()))?
            .close()
            .map_err(Error::io(path)),
        Encoder::Parquet(parquet) => parquet.close(path),
        // No record taken (all refused): no columns to infer, and a Parquet file needs one. An
        // empty file is left, which the lake discards unpublished as it does any empty file.
        Encoder::Infer(records) if records.is_empty() => open(path, Compression::None)?
            .close()
            .map_err(Error::io(path)),
        Encoder::Infer(records) => {
            let values: Vec<serde_json::Value> = records
                .iter()
                .filter_map(|r| serde_json::from_slice(r).ok())
                .collect();
            let columns = Arc::new(Columns::infer(&values));
            let mut encoder = fixed_encoder(path, format, compression, columns.clone())?;
            for record in &records {
                let outcome = match &mut encoder {
                    Encoder::Csv { out, columns, .. } => {
                        let mut row = Vec::with_capacity(columns.len());
                        match read_row(columns, record, &mut row) {
                            Ok(()) => {
                                write_csv_row(out, &row, raw_text)
                                    .map_err(|e| csv_error(path, e))?;
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Encoder::Parquet(parquet) => parquet.push(record)?,
                    _ => Ok(()),
                };
                if let Err(e) = outcome {
                    // The columns were inferred from these very records, each of which passed
                    // `check_inferable`: a mismatch is a bug.
                    return Err(Error::Io {
                        path: path.to_path_buf(),
                        source: std::io::Error::other(format!("inferred schema: {e}")),
                    });
                }
            }
            finish_encoder(encoder, path, (format, compression), raw_text)
        }
    }
}

fn open(path: &Path, compression: Compression) -> Result<Out> {
    Out::open(path, compression == Compression::Gzip).map_err(Error::io(path))
}

fn fixed_encoder(
    path: &Path,
    format: Format,
    compression: Compression,
    columns: Arc<Columns>,
) -> Result<Encoder> {
    Ok(match format {
        Format::Jsonl => Encoder::Jsonl(open(path, compression)?),
        Format::Csv => {
            let mut out = Box::new(csv::Writer::from_writer(open(path, compression)?));
            out.write_record(columns.iter().map(|c| c.name.as_str()))
                .map_err(|e| csv_error(path, e))?;
            Encoder::Csv {
                out,
                columns,
                raw: false,
            }
        }
        Format::Parquet => Encoder::Parquet(Box::new(ParquetEncoder::create(
            path,
            compression,
            columns,
        )?)),
    })
}

/// Whether a record is one JSON object (what every format requires).
fn check_object(record: &[u8]) -> std::result::Result<(), String> {
    let raw: &serde_json::value::RawValue =
        serde_json::from_slice(record).map_err(|e| format!("not JSON: {e}"))?;
    if raw.get().starts_with('{') {
        Ok(())
    } else {
        Err("not a JSON object".into())
    }
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn write_csv_row(out: &mut csv::Writer<Out>, row: &[Cell<'_>], raw: bool) -> csv::Result<()> {
    let mut number = String::new();
    for cell in row {
        number.clear();
        let field: &str = match cell {
            Cell::Null => "",
            Cell::Str(s) if !raw => match crate::text::csv_cell(s) {
                std::borrow::Cow::Borrowed(s) => s,
                std::borrow::Cow::Owned(neutral) => {
                    number = neutral;
                    &number
                }
            },
            Cell::Str(s) | Cell::Json(s) => s,
            Cell::Bool(b) => {
                if *b {
                    "true"
                } else {
                    "false"
                }
            }
            Cell::F64(x) => {
                number = x.to_string();
                &number
            }
            Cell::I64(i) => {
                number = i.to_string();
                &number
            }
            Cell::Timestamp(ms) => {
                number = crate::record::format_millis(*ms).unwrap_or_default();
                &number
            }
            Cell::List(items) => {
                number = serde_json::to_string(items).unwrap_or_default();
                &number
            }
        };
        out.write_field(field)?;
    }
    out.write_record(None::<&[u8]>)
}

/// Parquet: rows read into Arrow builders, handed to the writer every [`BATCH_ROWS`].
struct ParquetEncoder {
    writer: ArrowWriter<File>,
    schema: Arc<Schema>,
    columns: Arc<Columns>,
    builders: Vec<Builder>,
    row: Vec<Cell<'static>>,
    rows: usize,
}

enum Builder {
    Str(StringBuilder),
    F64(Float64Builder),
    I64(Int64Builder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMillisecondBuilder),
    List(ListBuilder<StringBuilder>),
}

impl Builder {
    fn new(ty: ColType) -> Builder {
        match ty {
            ColType::Str | ColType::Json => Builder::Str(StringBuilder::new()),
            ColType::F64 => Builder::F64(Float64Builder::new()),
            ColType::I64 => Builder::I64(Int64Builder::new()),
            ColType::Bool => Builder::Bool(BooleanBuilder::new()),
            ColType::Timestamp => Builder::Timestamp(TimestampMillisecondBuilder::new()),
            ColType::StrList => Builder::List(ListBuilder::new(StringBuilder::new())),
        }
    }

    /// `cell` has the builder's type: [`read_row`] made it so.
    fn append(&mut self, cell: &Cell<'_>) {
        match (self, cell) {
            (Builder::Str(b), Cell::Str(s) | Cell::Json(s)) => b.append_value(s),
            (Builder::F64(b), Cell::F64(x)) => b.append_value(*x),
            (Builder::I64(b), Cell::I64(i)) => b.append_value(*i),
            (Builder::Bool(b), Cell::Bool(v)) => b.append_value(*v),
            (Builder::Timestamp(b), Cell::Timestamp(ms)) => b.append_value(*ms),
            (Builder::List(b), Cell::List(items)) => {
                for item in items {
                    b.values().append_value(item);
                }
                b.append(true);
            }
            (Builder::Str(b), _) => b.append_null(),
            (Builder::F64(b), _) => b.append_null(),
            (Builder::I64(b), _) => b.append_null(),
            (Builder::Bool(b), _) => b.append_null(),
            (Builder::Timestamp(b), _) => b.append_null(),
            (Builder::List(b), _) => b.append(false),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) => Arc::new(b.finish().with_timezone("UTC")),
            Builder::List(b) => Arc::new(b.finish()),
        }
    }
}

/// The Arrow schema of a set of columns: times as `timestamp[ms, UTC]`, JSON as text.
pub fn arrow_schema(columns: &Columns) -> Schema {
    let fields: Vec<Field> = columns
        .iter()
        .map(|c| {
            let ty = match c.ty {
                ColType::Str | ColType::Json => DataType::Utf8,
                ColType::F64 => DataType::Float64,
                ColType::I64 => DataType::Int64,
                ColType::Bool => DataType::Boolean,
                ColType::Timestamp => {
                    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
                }
                ColType::StrList => {
                    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
                }
            };
            Field::new(&c.name, ty, c.nullable)
        })
        .collect();
    Schema::new(fields)
}

impl ParquetEncoder {
    fn create(path: &Path, compression: Compression, columns: Arc<Columns>) -> Result<Self> {
        let schema = Arc::new(arrow_schema(&columns));
        let codec = match compression {
            Compression::Zstd => parquet::basic::Compression::ZSTD(Default::default()),
            Compression::Snappy => parquet::basic::Compression::SNAPPY,
            _ => parquet::basic::Compression::UNCOMPRESSED,
        };
        let properties = WriterProperties::builder()
            .set_compression(codec)
            .set_max_row_group_row_count(Some(128 * 1024))
            .set_created_by(format!("quakestream {}", env!("CARGO_PKG_VERSION")))
            .build();
        let file = File::create(path).map_err(Error::io(path))?;
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(properties))
            .map_err(|e| parquet_error(path, e))?;
        let builders = columns.iter().map(|c| Builder::new(c.ty)).collect();
        Ok(ParquetEncoder {
            writer,
            schema,
            columns,
            builders,
            row: Vec::new(),
            rows: 0,
        })
    }

    fn push(&mut self, record: &[u8]) -> Result<std::result::Result<(), String>> {
        // The row borrows from `record` only for this call; the buffer is kept to reuse its
        // allocation.
        let mut row: Vec<Cell<'_>> = std::mem::take(&mut self.row)
            .into_iter()
            .map(|_| Cell::Null)
            .collect();
        if let Err(e) = read_row(&self.columns, record, &mut row) {
            return Ok(Err(e));
        }
        for (builder, cell) in self.builders.iter_mut().zip(&row) {
            builder.append(cell);
        }
        row.clear();
        self.row = row.into_iter().map(|_| Cell::Null).collect();
        self.rows += 1;
        if self.rows >= BATCH_ROWS {
            self.write_batch()?;
        }
        Ok(Ok(()))
    }

    fn write_batch(&mut self) -> Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| Error::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })?;
        self.rows = 0;
        self.writer
            .write(&batch)
            .map_err(|e| parquet_error(Path::new("parquet"), e))
    }

    fn close(mut self: Box<Self>, path: &Path) -> Result<()> {
        self.write_batch()?;
        let file = self
            .writer
            .into_inner()
            .map_err(|e| parquet_error(path, e))?;
        file.sync_all().map_err(Error::io(path))
    }
}

fn parquet_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("parquet: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Only {
        format: Formats,
    }

    fn formats(toml_value: &str) -> std::result::Result<Formats, String> {
        toml::from_str::<Only>(&format!("format = {toml_value}"))
            .map(|o| o.format)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn formats_are_one_or_a_list_and_bad_ones_say_what_is_expected() {
        assert_eq!(formats(r#""csv""#).unwrap(), Formats::one(Format::Csv));
        let three = formats(r#"["jsonl", "csv", "parquet"]"#).unwrap();
        assert_eq!(
            three.iter().collect::<Vec<_>>(),
            [Format::Jsonl, Format::Csv, Format::Parquet]
        );
        for bad in [r#""xlsx""#, "3", r#"["csv", 1]"#, r#"{ a = "csv" }"#] {
            let error = formats(bad).unwrap_err();
            assert!(error.contains("a list of them"), "{bad}: {error}");
        }
        assert!(
            formats(r#"["csv", "xml"]"#)
                .unwrap_err()
                .contains(r#"unknown format "xml""#)
        );
        // Written back as it was given: a string for one, a list for several.
        let back = |f: &Formats| serde_json::to_string(f).unwrap();
        assert_eq!(back(&Formats::one(Format::Csv)), r#""csv""#);
        assert_eq!(back(&three), r#"["jsonl","csv","parquet"]"#);
    }

    #[test]
    fn several_formats_take_the_compression_where_it_fits() {
        let three = formats(r#"["jsonl", "csv", "parquet"]"#).unwrap();
        let of = |c| {
            three
                .iter()
                .map(|f| three.compression(f, c))
                .collect::<Vec<_>>()
        };
        use Compression::*;
        assert_eq!(of(Gzip), [Gzip, Gzip, Snappy]);
        assert_eq!(of(Zstd), [None, None, Zstd]);
        assert_eq!(of(None), [None, None, None]);
        assert!(three.check(Gzip).is_ok());
        // One format keeps the strict rule; a compression no listed format takes is refused.
        assert!(Formats::one(Format::Csv).check(Snappy).is_err());
        let text = formats(r#"["jsonl", "csv"]"#).unwrap();
        assert!(text.check(Zstd).unwrap_err().contains("fits none"));
        assert!(
            formats("[]")
                .unwrap()
                .check(None)
                .unwrap_err()
                .contains("empty")
        );
        let twice = formats(r#"["csv", "csv"]"#).unwrap();
        assert!(twice.check(None).unwrap_err().contains("twice"));
    }

    /// Regression: an integer above i64::MAX in a topic with inferred columns failed the whole
    /// file when it was finished, and the segment was replayed into the same failure forever.
    #[test]
    fn an_integer_above_i64_is_refused_alone_and_the_inferred_file_is_written() {
        let dir = tempfile::tempdir().unwrap();
        for format in [Format::Csv, Format::Parquet] {
            let path = dir
                .path()
                .join(format!("f.{}", format.extension(Compression::None)));
            let mut file =
                FileEncoder::create(&path, format, Compression::None, &FileSchema::Infer).unwrap();
            let records: [&[u8]; 6] = [
                br#"{"n":1,"s":"a"}"#,
                br#"{"n":18446744073709551616,"s":"b"}"#,
                br#"{"n":9223372036854775808,"s":"c"}"#,
                br#"{"n":1e400,"s":"d"}"#,
                br#"{}"#,
                br#"{"n":2,"s":"e"}"#,
            ];
            let accepted: Vec<bool> = records
                .iter()
                .map(|r| file.push(r).unwrap().is_ok())
                .collect();
            assert_eq!(accepted, [true, false, false, false, false, true]);
            assert_eq!(file.records(), 2);
            let written = file.finish().unwrap();
            match format {
                Format::Csv => assert_eq!(
                    std::fs::read_to_string(&written).unwrap(),
                    "n,s\n1,a\n2,e\n"
                ),
                _ => {
                    let reader =
                        ParquetRecordBatchReaderBuilder::try_new(File::open(&written).unwrap())
                            .unwrap()
                            .build()
                            .unwrap();
                    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
                    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                    assert_eq!(rows, 2);
                    let schema = batches[0].schema();
                    assert_eq!(
                        schema.field_with_name("n").unwrap().data_type(),
                        &DataType::Int64
                    );
                }
            }
            // A file whose every record was refused finishes (empty) instead of failing.
            let path = dir
                .path()
                .join(format!("g.{}", format.extension(Compression::None)));
            let mut file =
                FileEncoder::create(&path, format, Compression::None, &FileSchema::Infer).unwrap();
            assert!(
                file.push(br#"{"n":18446744073709551616}"#)
                    .unwrap()
                    .is_err()
            );
            assert_eq!(file.records(), 0);
            file.finish().unwrap();
        }
    }
}
