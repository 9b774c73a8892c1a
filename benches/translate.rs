//! XML ⇄ JSON translation throughput of `lienthong::translate`, measured in the same process
//! and on the same documents as quick-xml's raw event loop (the yardstick of the translation
//! issue: XML→JSON ≥ 0.5× raw event throughput). Driven by `benches/translate.sh`, which adds
//! Python xmltodict on the same files and the 100 MB peak-RSS run.
//!
//! Sampling mirrors `../shared/bench/upstream/src/bin/parsebench.rs`: each sample runs the
//! operation in a batch lasting at least SAMPLE_MS; SAMPLES samples; the median (and best) is
//! reported; MB = 10^6 bytes of *input* document. Unlike parsebench the samples of all lines
//! of one document are taken round-robin, so slow drift of a noisy machine hits every line
//! alike and the ratios stay meaningful. The process uses mimalloc like the gateway binary.
//!
//! Documents (≈10 KB and ≈1 MB each, targets 10·1024 and 1024·1024 bytes like parsebench):
//! * `persons` — byte-for-byte parsebench's document (`docs::xml_doc`, copied below because
//!   `shared/` is not part of the crate): compact, no namespaces, a few attributes/entities;
//! * `dossier` — a synthetic DVCQG-style dossier-sync batch (`DongBoHoSo`/`HoSo`): two
//!   namespaces, attributes, `xsi:nil`, indentation, entities, Vietnamese text.
//!
//! Usage (the binary; `cargo bench --bench translate` runs the first form):
//!   translate [--quick]              measure; prints a table and the ratios
//!   translate --big N_MB PATH        write a ≈N MiB `dossier` XML document to PATH and exit
//!   translate --x2j IN [OUT]         translate the file IN (XML→JSON) once, optionally write
//!   translate --j2x IN [OUT]         OUT, print time and peak RSS (VmHWM) — for RSS runs
//!   translate --loop x2j|j2x persons|dossier 10KB|1MB SECONDS
//!                                    repeat one translation (for perf record / callgrind)
//!   translate --count events|events+text|x2j persons|dossier 10KB|1MB N
//!                                    run one operation exactly N times inside
//!                                    `counted_runs` (deterministic; for callgrind's
//!                                    `--toggle-collect='*counted_runs*'` instruction counts)
//! Env: SAMPLE_MS (default 300; 80 with --quick), SAMPLES (default 5; 3 with --quick),
//!      TRANSLATE_BENCH_DIR: if set, the documents (XML and the engine's JSON) and a
//!      `results.tsv` of the measurements are written there.

use lienthong::translate::{self, ArrayPaths, JsonToXmlOptions, Limits, XmlToJsonOptions, XSI_NS};
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;
use quick_xml::{Reader, XmlVersion};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: lienthong::alloc::MiMalloc = lienthong::alloc::MiMalloc;

const HS_NS: &str = "urn:lienthong:bench:dvcqg:hoso:1.0";
const TT_NS: &str = "urn:lienthong:bench:dvcqg:thutuc:1.0";

// ------------------------------------------------------------------ documents: persons
// Copied from ../shared/bench/upstream/src/docs.rs (xml_record / xml_doc) so that this bench
// parses exactly the document parsebench reports on (`is_multiple_of` written as `%` for the
// crate's MSRV).

const GIVEN: [&str; 8] = [
    "Anna", "Jürgen", "Maria", "Olivier", "Sofia", "Liam", "Zoë", "Noah",
];
const FAMILY: [&str; 8] = [
    "Müller",
    "Smith",
    "García",
    "Dubois",
    "Kowalski",
    "Rossi",
    "Nguyen",
    "Ødegaard",
];
const CITY: [&str; 4] = ["Springfield", "Rivertown", "Lakeside", "Hillview"];

fn persons_record(i: usize, s: &mut String) {
    let id = format!("P-{:06}", i);
    let given = GIVEN[i % GIVEN.len()];
    let family = FAMILY[(i / 3) % FAMILY.len()];
    let birth = format!(
        "19{:02}-{:02}-{:02}",
        40 + (i % 60),
        1 + (i % 12),
        1 + (i % 28)
    );
    let city = CITY[i % CITY.len()];
    let street = format!("Main Street {}", 1 + i % 250);
    let postcode = format!("{:05}", 10000 + (i * 37) % 89999);
    let amount1 = format!("{}.{:02}", 100 + (i * 13) % 900, i % 100);
    write!(
        s,
        concat!(
            r#"<person id="{}"><name><given>{}</given><family>{}</family></name>"#,
            r#"<birthDate>{}</birthDate><address><street>{}</street><city>{}</city>"#,
            r#"<postcode>{}</postcode><country>DE</country></address><status>{}</status>"#,
            r#"<benefits><benefit code="B1" currency="EUR">{}</benefit>"#,
            r#"<benefit code="B2" currency="EUR">{}.5</benefit></benefits>"#,
            r#"<note>Checked &amp; approved &lt;ok&gt; &quot;quoted&quot; &#233;</note><active>{}</active></person>"#
        ),
        id,
        given,
        family,
        birth,
        street,
        city,
        postcode,
        if i.is_multiple_of(5) { "pending" } else { "active" },
        amount1,
        i % 400,
        !i.is_multiple_of(7)
    )
    .unwrap();
}

/// parsebench's `docs::xml_doc(target)`.
fn persons_doc(target: usize) -> String {
    let mut s = String::with_capacity(target + 512);
    s.push_str(r#"<?xml version="1.0" encoding="UTF-8"?><persons>"#);
    let mut i = 0;
    loop {
        persons_record(i, &mut s);
        i += 1;
        if s.len() + 10 >= target {
            break;
        }
    }
    s.push_str("</persons>");
    s
}

// ------------------------------------------------------------------ documents: dossier
// Synthetic: shapes follow ../shared/domain/samples/constructed/dvcqg-dongbohosomc-request.json
// rendered as namespaced XML; names, numbers and addresses are made up.

const HO: [&str; 8] = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Vũ", "Đặng", "Bùi"];
const DEM: [&str; 6] = ["Văn", "Thị", "Minh", "Quốc", "Thu", "Đức"];
const TEN: [&str; 10] = [
    "An", "Bình", "Chi", "Dũng", "Giang", "Hà", "Khánh", "Linh", "Phương", "Tùng",
];
const THU_TUC: [(&str, &str, &str); 6] = [
    ("1.001193.000.00.00.H22", "G01-TP01", "Đăng ký khai sinh"),
    ("1.000894.000.00.00.H22", "G01-TP01", "Đăng ký kết hôn"),
    (
        "3.000182.000.00.00.H22",
        "G03-GD10",
        "Tuyển sinh trung học cơ sở",
    ),
    (
        "1.001612.000.00.00.H22",
        "G05-XD01",
        "Cấp giấy phép xây dựng nhà ở riêng lẻ",
    ),
    (
        "2.000889.000.00.00.H22",
        "G12-CT02",
        "Chứng thực bản sao từ bản chính giấy tờ, văn bản",
    ),
    ("1.004227.000.00.00.H22", "G09-DD03", "Đăng ký thường trú"),
];
const DON_VI: [&str; 5] = [
    "Phòng Tư pháp",
    "UBND phường Hoàn Kiếm",
    "Phòng Giáo dục và Đào tạo",
    "Bộ phận Một cửa UBND tỉnh Tuyên Quang",
    "Công an phường Ba Đình",
];
const DIA_CHI: [&str; 4] = [
    "phố Hàng Bạc, phường Hoàn Kiếm, thành phố Hà Nội",
    "thôn Nà Lầu, xã Ngọc Đường, tỉnh Tuyên Quang",
    "đường Lê Lợi, phường Bến Thành, Thành phố Hồ Chí Minh",
    "tổ 5, phường Hòa Khánh, thành phố Đà Nẵng",
];

fn dossier_header(s: &mut String) {
    write!(
        s,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<hs:DongBoHoSo xmlns:hs=\"{HS_NS}\" \
         xmlns:tt=\"{TT_NS}\" xmlns:xsi=\"{XSI_NS}\" phienBan=\"2.0\" maDonVi=\"000.00.01.H22\">\n"
    )
    .unwrap();
}

const DOSSIER_FOOTER: &str = "</hs:DongBoHoSo>\n";

fn dossier_record(i: usize, s: &mut String) {
    let (ma_tthc, linh_vuc, ten_tthc) = THU_TUC[i % THU_TUC.len()];
    let ho_ten = format!(
        "{} {} {}",
        HO[i % HO.len()],
        DEM[(i / 3) % DEM.len()],
        TEN[(i / 7) % TEN.len()]
    );
    let day = 1 + i % 28;
    let ngay = |d: usize, h: usize| format!("202507{:02}{:02}{:02}00", d.min(28), h, (i * 7) % 60);
    let trang_thai = 1 + i % 6;
    write!(
        s,
        concat!(
            "  <hs:HoSo maHoSo=\"000.00.01.H22-2507{:02}-{:06}\" trangThai=\"{}\" kenhThucHien=\"{}\">\n",
            "    <tt:ThuTuc maTTHC=\"{}\" maLinhVuc=\"{}\">{}</tt:ThuTuc>\n",
            "    <hs:ChuHoSo loaiDoiTuong=\"{}\">\n",
            "      <hs:HoTen>{}</hs:HoTen>\n",
            "      <hs:SoDinhDanh>0{:011}</hs:SoDinhDanh>\n",
            "      <hs:SoDienThoai>09{:08}</hs:SoDienThoai>\n",
            "      <hs:Email>congdan{}@example.vn</hs:Email>\n",
            "      <hs:DiaChi>Số {} {}</hs:DiaChi>\n",
            "    </hs:ChuHoSo>\n",
            "    <hs:TrichYeu>Hồ sơ {} của ông/bà {}</hs:TrichYeu>\n",
            "    <hs:NgayNop>{}</hs:NgayNop>\n",
            "    <hs:NgayTiepNhan>{}</hs:NgayTiepNhan>\n",
            "    <hs:NgayHenTra>{}</hs:NgayHenTra>\n",
        ),
        day,
        i,
        trang_thai,
        1 + i % 2,
        ma_tthc,
        linh_vuc,
        ten_tthc,
        1 + i % 2,
        ho_ten,
        (i * 7919) % 100_000_000_000,
        (i * 104_729) % 100_000_000,
        i,
        1 + i % 200,
        DIA_CHI[i % DIA_CHI.len()],
        ten_tthc.to_lowercase(),
        ho_ten,
        ngay(day, 8),
        ngay(day, 9),
        ngay(day + 7, 17),
    )
    .unwrap();
    if trang_thai == 6 {
        writeln!(s, "    <hs:NgayTra>{}</hs:NgayTra>", ngay(day + 5, 15)).unwrap();
    } else {
        s.push_str("    <hs:NgayTra xsi:nil=\"true\"/>\n");
    }
    writeln!(
        s,
        "    <hs:DonViXuLy>{}</hs:DonViXuLy>",
        DON_VI[i % DON_VI.len()]
    )
    .unwrap();
    s.push_str("    <hs:TaiLieuNop>\n");
    for k in 0..1 + i % 3 {
        let id = i * 3 + k + 100;
        write!(
            s,
            concat!(
                "      <hs:TepDinhKem id=\"{}\" duocSoHoa=\"{}\" loai=\"application/pdf\">\n",
                "        <hs:Ten>{}-{}.pdf</hs:Ten>\n",
                "        <hs:DuongDan>https://motcua.example.gov.vn/download/{}?ma=000.00.01.H22&amp;v=2</hs:DuongDan>\n",
                "      </hs:TepDinhKem>\n",
            ),
            id,
            (i + k) % 2,
            ["Don-de-nghi", "Ban-sao-CCCD", "Giay-xac-nhan-cu-tru"][k],
            i,
            id
        )
        .unwrap();
    }
    s.push_str("    </hs:TaiLieuNop>\n");
    write!(
        s,
        concat!(
            "    <hs:LePhi maPhiLePhi=\"{}\" hinhThucThu=\"1\" gia=\"{}\">Lệ phí</hs:LePhi>\n",
            "    <hs:GhiChu>Đã kiểm tra &lt;đủ điều kiện&gt; &amp; chuyển &quot;bộ phận xử lý&quot; &#8211; lần {}</hs:GhiChu>\n",
            "  </hs:HoSo>\n",
        ),
        1 + i % 3,
        (i % 4) * 25_000,
        1 + i % 3
    )
    .unwrap();
}

/// `dossier` document of at least `target` bytes (at least one record), built like
/// parsebench's `xml_doc`.
fn dossier_doc(target: usize) -> String {
    let mut s = String::with_capacity(target + 4096);
    dossier_header(&mut s);
    let mut i = 0;
    loop {
        dossier_record(i, &mut s);
        i += 1;
        if s.len() + DOSSIER_FOOTER.len() >= target {
            break;
        }
    }
    s.push_str(DOSSIER_FOOTER);
    s
}

/// Streams a ≈`target`-byte dossier document to `path` (for the 100 MB run).
fn write_big_dossier(path: &Path, target: usize) -> std::io::Result<usize> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut s = String::with_capacity(8192);
    dossier_header(&mut s);
    let mut written = 0;
    let mut i = 0;
    loop {
        f.write_all(s.as_bytes())?;
        written += s.len();
        s.clear();
        if written + DOSSIER_FOOTER.len() >= target {
            break;
        }
        dossier_record(i, &mut s);
        i += 1;
    }
    f.write_all(DOSSIER_FOOTER.as_bytes())?;
    written += DOSSIER_FOOTER.len();
    f.flush()?;
    Ok(written)
}

// ------------------------------------------------------------------ translation options

fn limits() -> Limits {
    // Raised explicitly: the 1 MB documents fit the defaults (16 MiB input, 64 MiB output)
    // anyway; the 100 MB file does not.
    Limits {
        max_total_bytes: 1 << 30,
        max_output_bytes: 2 << 30,
        ..Limits::default()
    }
}

struct Kind {
    name: &'static str,
    x2j: XmlToJsonOptions,
    j2x: JsonToXmlOptions,
}

fn kinds() -> [Kind; 2] {
    let persons = Kind {
        name: "persons",
        x2j: XmlToJsonOptions {
            arrays: ArrayPaths::new(["//person", "//benefit"]),
            limits: limits(),
            ..XmlToJsonOptions::default()
        },
        j2x: JsonToXmlOptions {
            limits: limits(),
            ..JsonToXmlOptions::default()
        },
    };
    let mut ns: BTreeMap<String, String> = translate::default_namespaces();
    ns.insert(HS_NS.to_string(), String::new());
    ns.insert(TT_NS.to_string(), "tt".to_string());
    let dossier = Kind {
        name: "dossier",
        x2j: XmlToJsonOptions {
            arrays: ArrayPaths::new(["//HoSo", "//TepDinhKem"]),
            namespaces: ns.clone(),
            limits: limits(),
            ..XmlToJsonOptions::default()
        },
        j2x: JsonToXmlOptions {
            namespaces: ns,
            limits: limits(),
            ..JsonToXmlOptions::default()
        },
    };
    [persons, dossier]
}

// ------------------------------------------------------------------ baselines (parsebench)

/// parsebench `xml.events`: read_event() until Eof, borrowed, no decoding.
/// (`Reader::from_reader(&[u8])` is what parsebench's `Reader::from_str` does without the
/// `encoding` feature.)
fn xml_events(b: &[u8]) -> usize {
    let mut r = Reader::from_reader(b);
    let mut n = 0usize;
    loop {
        match r.read_event() {
            Ok(Event::Eof) => break,
            Ok(_) => n += 1,
            Err(e) => panic!("xml error: {e}"),
        }
    }
    n
}

fn resolve_ref(e: &quick_xml::events::BytesRef<'_>, out: &mut String) {
    if let Ok(Some(c)) = e.resolve_char_ref() {
        out.push(c);
    } else if let Some(s) = resolve_predefined_entity(e) {
        out.push_str(s);
    } else {
        panic!("unknown entity");
    }
}

/// parsebench `xml.events+text`: plus attribute normalisation, text EOL normalisation and
/// reference resolution.
fn xml_events_text(b: &[u8]) -> usize {
    let mut r = Reader::from_reader(b);
    let mut n = 0usize;
    let mut text = String::new();
    loop {
        match r.read_event() {
            Ok(Event::Eof) => break,
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                n += e.name().as_ref().len();
                for a in e.attributes() {
                    let a = a.expect("attr");
                    n += a.key.as_ref().len()
                        + a.normalized_value(XmlVersion::Implicit1_0)
                            .expect("attr value")
                            .len();
                }
            }
            Ok(Event::Text(e)) => text.push_str(&e.xml10_content()),
            Ok(Event::GeneralRef(e)) => resolve_ref(&e, &mut text),
            Ok(Event::End(_)) => {
                n += text.len();
                text.clear();
            }
            Ok(_) => {}
            Err(e) => panic!("xml error: {e}"),
        }
    }
    n
}

// ------------------------------------------------------------------ measurement

struct Cfg {
    sample: Duration,
    samples: usize,
}

type Op<'a> = Box<dyn FnMut() -> usize + 'a>;

struct Line<'a> {
    name: &'static str,
    bytes: usize,
    f: Op<'a>,
    iters: u64,
    ns: Vec<f64>,
}

/// parsebench's calibration: grow the batch ×4 until it lasts ≥ sample/4, then size it to
/// last ≈ sample.
fn calibrate(cfg: &Cfg, f: &mut Op<'_>) -> u64 {
    let mut iters: u64 = 1;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(f());
        }
        let el = t.elapsed();
        if el >= cfg.sample / 4 {
            let per = el.as_nanos() as f64 / iters as f64;
            return ((cfg.sample.as_nanos() as f64 / per).ceil() as u64).max(1);
        }
        iters *= 4;
    }
}

/// Calibrates every line, then takes `samples` rounds, one sample of each line per round.
/// Returns (median, best) ns per call for each line.
fn measure_round_robin(cfg: &Cfg, lines: &mut [Line<'_>]) {
    for l in lines.iter_mut() {
        l.iters = calibrate(cfg, &mut l.f);
    }
    for _ in 0..cfg.samples {
        for l in lines.iter_mut() {
            let t = Instant::now();
            for _ in 0..l.iters {
                black_box((l.f)());
            }
            l.ns.push(t.elapsed().as_nanos() as f64 / l.iters as f64);
        }
    }
    for l in lines.iter_mut() {
        l.ns.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
}

fn median(v: &[f64]) -> f64 {
    v[v.len() / 2]
}

fn mbps(bytes: usize, ns: f64) -> f64 {
    bytes as f64 / ns * 1e3
}

// ------------------------------------------------------------------ RSS / one-shot modes

fn proc_status(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn one_shot(dir_x2j: bool, input: &Path, output: Option<&Path>) {
    let kinds = kinds();
    let k = &kinds[1];
    let hwm0 = proc_status("VmHWM:").unwrap_or(0);
    let t0 = Instant::now();
    let data = std::fs::read(input).unwrap_or_else(|e| panic!("read {}: {e}", input.display()));
    let read_s = t0.elapsed().as_secs_f64();
    let hwm_read = proc_status("VmHWM:").unwrap_or(0);
    let t = Instant::now();
    // the gateway's own wrappers (output buffer pre-sized the way the gateway does it)
    let out = if dir_x2j {
        translate::xml_to_json_bytes(&data, &k.x2j)
    } else {
        translate::json_to_xml_bytes(&data, &k.j2x)
    }
    .unwrap_or_else(|e| panic!("translate {}: {e}", input.display()));
    let secs = t.elapsed().as_secs_f64();
    let hwm = proc_status("VmHWM:").unwrap_or(0);
    println!(
        "oneshot dir={} in_bytes={} out_bytes={} read_s={:.3} translate_s={:.3} mbps={:.1} \
         vmhwm_start_kb={} vmhwm_after_read_kb={} vmhwm_end_kb={}",
        if dir_x2j { "xml->json" } else { "json->xml" },
        data.len(),
        out.len(),
        read_s,
        secs,
        data.len() as f64 / secs / 1e6,
        hwm0,
        hwm_read,
        hwm
    );
    if let Some(o) = output {
        std::fs::write(o, &out).unwrap_or_else(|e| panic!("write {}: {e}", o.display()));
    }
}

/// `--loop x2j|j2x persons|dossier 10KB|1MB SECONDS`: repeats one translation for a while
/// (for `perf record` / callgrind).
fn profile_loop(a: &[String]) {
    let usage = "--loop x2j|j2x persons|dossier 10KB|1MB SECONDS";
    let (dir, doc, size) = (
        a.first().expect(usage),
        a.get(1).expect(usage),
        a.get(2).expect(usage),
    );
    let secs: f64 = a.get(3).and_then(|v| v.parse().ok()).unwrap_or(5.0);
    let kinds = kinds();
    let k = kinds.iter().find(|k| k.name == doc).expect(usage);
    let xml = sized_doc(k.name, size);
    let mut json = Vec::new();
    translate::xml_to_json(xml.as_bytes(), &k.x2j, &mut json).unwrap();
    let input: &[u8] = if dir == "x2j" { xml.as_bytes() } else { &json };
    let mut out = Vec::with_capacity(input.len() * 2);
    let (t, mut n, mut bytes) = (Instant::now(), 0u64, 0usize);
    while t.elapsed().as_secs_f64() < secs {
        out.clear();
        if dir == "x2j" {
            translate::xml_to_json(input, &k.x2j, &mut out).unwrap();
        } else {
            translate::json_to_xml(input, &k.j2x, &mut out).unwrap();
        }
        n += 1;
        bytes += input.len();
        black_box(&out);
    }
    println!(
        "loop {dir} {doc} {size}: {n} runs, {:.1} MB/s",
        bytes as f64 / t.elapsed().as_secs_f64() / 1e6
    );
}

/// The `persons` or `dossier` document of about 10 KB, or 1 MiB for `size == "1MB"`.
fn sized_doc(name: &str, size: &str) -> String {
    let target = if size == "1MB" {
        1024 * 1024
    } else {
        10 * 1024
    };
    if name == "persons" {
        persons_doc(target)
    } else {
        dossier_doc(target)
    }
}

/// The measured part of `--count`: kept out of line so that callgrind can count it alone.
#[inline(never)]
fn counted_runs(n: usize, f: &mut dyn FnMut() -> usize) -> usize {
    (0..n).map(|_| black_box(f())).sum()
}

/// `--count events|events+text|x2j persons|dossier 10KB|1MB N`: runs one operation exactly N
/// times, so that instruction counts of the raw event loop and of the translation can be
/// compared on the same document.
fn count_runs(a: &[String]) {
    let usage = "--count events|events+text|x2j persons|dossier 10KB|1MB N";
    let (op, doc, size) = (
        a.first().expect(usage),
        a.get(1).expect(usage),
        a.get(2).expect(usage),
    );
    let n: usize = a.get(3).and_then(|v| v.parse().ok()).expect(usage);
    let kinds = kinds();
    let k = kinds.iter().find(|k| k.name == doc).expect(usage);
    let xml = sized_doc(k.name, size);
    let xml = xml.as_bytes();
    let mut out = Vec::with_capacity(xml.len() * 2);
    let mut f: Box<dyn FnMut() -> usize> = match op.as_str() {
        "events" => Box::new(|| xml_events(xml)),
        "events+text" => Box::new(|| xml_events_text(xml)),
        "x2j" => Box::new(|| {
            out.clear();
            translate::xml_to_json(xml, &k.x2j, &mut out).unwrap();
            out.len()
        }),
        _ => panic!("{usage}"),
    };
    let total = counted_runs(n, &mut *f);
    println!(
        "count {op} {doc} {size}: {n} runs, {} bytes in, {total}",
        xml.len()
    );
}

// ------------------------------------------------------------------ main

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pos = |flag: &str| args.iter().position(|a| a == flag);
    if let Some(p) = pos("--big") {
        let mb: usize = args
            .get(p + 1)
            .and_then(|v| v.parse().ok())
            .expect("--big N_MB PATH");
        let path = PathBuf::from(args.get(p + 2).expect("--big N_MB PATH"));
        let n = write_big_dossier(&path, mb << 20).expect("write big document");
        println!("big dossier: {} bytes -> {}", n, path.display());
        return;
    }
    for (flag, x2j) in [("--x2j", true), ("--j2x", false)] {
        if let Some(p) = pos(flag) {
            let input = PathBuf::from(args.get(p + 1).expect("--x2j|--j2x IN [OUT]"));
            let output = args
                .get(p + 2)
                .filter(|a| !a.starts_with("--"))
                .map(PathBuf::from);
            one_shot(x2j, &input, output.as_deref());
            return;
        }
    }

    if let Some(p) = pos("--loop") {
        profile_loop(&args[p + 1..]);
        return;
    }
    if let Some(p) = pos("--count") {
        count_runs(&args[p + 1..]);
        return;
    }

    let quick = pos("--quick").is_some();
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let cfg = Cfg {
        sample: Duration::from_millis(env("SAMPLE_MS", if quick { 80 } else { 300 })),
        samples: (env("SAMPLES", if quick { 3 } else { 5 }) as usize).max(1),
    };
    let out_dir = std::env::var_os("TRANSLATE_BENCH_DIR").map(PathBuf::from);
    if let Some(d) = &out_dir {
        std::fs::create_dir_all(d).expect("create TRANSLATE_BENCH_DIR");
    }

    println!(
        "# translate bench: sample {} ms x {} samples (round-robin), median (and best); \
         MB = 1e6 bytes of input; quick-xml 0.42 raw events vs lienthong::translate",
        cfg.sample.as_millis(),
        cfg.samples
    );
    println!(
        "{:<22} {:<8} {:<6} {:>9}  {:>10} {:>14} {:>12}",
        "measurement", "doc", "size", "bytes", "MB/s", "(best)", "us/doc"
    );
    let mut tsv = String::from("doc\tsize\tmeasurement\tin_bytes\tmedian_mbps\tbest_mbps\n");
    let mut summary = Vec::new();
    for kind in kinds() {
        for (size, target) in [("10KB", 10 * 1024), ("1MB", 1024 * 1024)] {
            let xml = match kind.name {
                "persons" => persons_doc(target),
                _ => dossier_doc(target),
            };
            let xml = xml.as_bytes();
            // The JSON→XML input is the engine's own XML→JSON output of this document.
            let mut json = Vec::new();
            translate::xml_to_json(xml, &kind.x2j, &mut json)
                .unwrap_or_else(|e| panic!("{} {size}: xml->json: {e}", kind.name));
            let mut xml2 = Vec::new();
            translate::json_to_xml(&json, &kind.j2x, &mut xml2)
                .unwrap_or_else(|e| panic!("{} {size}: json->xml: {e}", kind.name));
            // sanity: the round trip is stable
            let mut json2 = Vec::new();
            translate::xml_to_json(&xml2, &kind.x2j, &mut json2).expect("re-translate");
            assert!(
                json == json2,
                "{} {size}: JSON→XML→JSON changed the document",
                kind.name
            );
            serde_json::from_slice::<serde::de::IgnoredAny>(&json).expect("engine JSON is JSON");
            if let Some(d) = &out_dir {
                let base = d.join(format!("{}-{}", kind.name, size));
                std::fs::write(base.with_extension("xml"), xml).unwrap();
                std::fs::write(base.with_extension("json"), &json).unwrap();
            }

            let mut x2j_buf = Vec::with_capacity(json.len() * 2);
            let mut j2x_buf = Vec::with_capacity(xml2.len() * 2);
            let (x2j_opts, j2x_opts, json_ref) = (&kind.x2j, &kind.j2x, &json);
            let mut lines = vec![
                Line {
                    name: "xml.events",
                    bytes: xml.len(),
                    f: Box::new(|| xml_events(xml)),
                    iters: 0,
                    ns: Vec::new(),
                },
                Line {
                    name: "xml.events+text",
                    bytes: xml.len(),
                    f: Box::new(|| xml_events_text(xml)),
                    iters: 0,
                    ns: Vec::new(),
                },
                Line {
                    name: "lienthong xml->json",
                    bytes: xml.len(),
                    f: Box::new(move || {
                        x2j_buf.clear();
                        translate::xml_to_json(xml, x2j_opts, &mut x2j_buf).unwrap();
                        x2j_buf.len()
                    }),
                    iters: 0,
                    ns: Vec::new(),
                },
                Line {
                    name: "serde_json Value",
                    bytes: json.len(),
                    f: Box::new(|| {
                        serde_json::from_slice::<serde_json::Value>(json_ref)
                            .unwrap()
                            .is_object() as usize
                    }),
                    iters: 0,
                    ns: Vec::new(),
                },
                Line {
                    name: "lienthong json->xml",
                    bytes: json.len(),
                    f: Box::new(move || {
                        j2x_buf.clear();
                        translate::json_to_xml(json_ref, j2x_opts, &mut j2x_buf).unwrap();
                        j2x_buf.len()
                    }),
                    iters: 0,
                    ns: Vec::new(),
                },
            ];
            measure_round_robin(&cfg, &mut lines);
            let mut events = 0.0;
            for l in &lines {
                let med = median(&l.ns);
                println!(
                    "{:<22} {:<8} {:<6} {:>9}  {:>10.1} {:>14} {:>12.2}",
                    l.name,
                    kind.name,
                    size,
                    l.bytes,
                    mbps(l.bytes, med),
                    format!("(best {:.1})", mbps(l.bytes, l.ns[0])),
                    med / 1e3
                );
                writeln!(
                    tsv,
                    "{}\t{}\t{}\t{}\t{:.3}\t{:.3}",
                    kind.name,
                    size,
                    l.name,
                    l.bytes,
                    mbps(l.bytes, med),
                    mbps(l.bytes, l.ns[0])
                )
                .unwrap();
                if l.name == "xml.events" {
                    events = mbps(l.bytes, med);
                }
                if l.name == "lienthong xml->json" {
                    summary.push((kind.name, size, mbps(l.bytes, med), events));
                }
            }
            println!(
                "# {} {}: xml {} B -> json {} B -> xml {} B (round trip checked)",
                kind.name,
                size,
                xml.len(),
                json.len(),
                xml2.len()
            );
        }
    }
    println!("# xml->json / raw quick-xml events (goal >= 0.5x), same document, same run:");
    for (doc, size, x2j, ev) in &summary {
        let r = x2j / ev;
        println!(
            "#   {:<8} {:<5} {:>7.1} / {:>7.1} MB/s = {:.2}x  {}",
            doc,
            size,
            x2j,
            ev,
            r,
            if r >= 0.5 { "MEETS" } else { "BELOW GOAL" }
        );
    }
    if let Some(d) = &out_dir {
        std::fs::write(d.join("results.tsv"), tsv).unwrap();
    }
}
