//! Canonical dossier (hồ sơ) model of the exchange core.
//!
//! The gateway accepts one canonical JSON shape from every local one-stop-shop system (MC/MCLT) and
//! later renders it per counterpart (DVCQG `DongBoHoSoMC` / `CapNhatTienDoHoSoMC`, ministry iGate,
//! EMC). Field names here are English snake_case; the national names they map to are listed in
//! [`FIELD_MAP`], taken from the domain brief §4.4, §4.5, §4.9 and the constructed samples
//! (`dvcqg-dongbohosomc-request.json`, `dvcqg-capnhattiendohosomc-request.json`,
//! `dvc-bo-igate-dossier-sample.json`). No national field was invented: where the brief has no
//! national name (citizen evaluation), the canonical field is marked as gateway-only.
//!
//! Conventions:
//! * Date-times are the national format `yyyyMMddHHmmss` in Vietnam time (Asia/Ho_Chi_Minh,
//!   fixed UTC+7, no DST), because every DVCQG payload uses it; counterparts with other formats
//!   (iGate `yyyy-MM-dd HH:mm:ss`) are a rendering concern.
//! * Code lists the brief documents only partially (LoaiDoiTuong, KenhThucHien, HinhThuc…) are kept
//!   as the national code strings and checked in [`validate`], so a wrong value yields a 422 that
//!   names the field instead of an anonymous parse error.
//! * National booleans travel as `"True"`/`"False"` or `"0"`/`"1"`; the canonical model uses JSON
//!   booleans but accepts the national spellings on input.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Canonical dossier. `code` is optional on intake: the store assigns
/// `{receiving_unit}-{yyMMdd}-{NNNN}` when it is absent (brief §9.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dossier {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub procedure_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub procedure_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_name: Option<String>,
    /// Electronic identifier (mã định danh, QĐ 20/2020) of the receiving unit.
    pub receiving_unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_unit_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission_place: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    pub status: TrangThaiHoSo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_ended_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_delivery: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub has_digitised_components: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_payment: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connected_databases: Vec<String>,
    pub applicant: Applicant,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub documents: Vec<Document>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paper_documents: Vec<PaperDocument>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fees: Vec<Fee>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supplements: Vec<Supplement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<ProcessingStep>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<ResultDocument>,
}

/// Applicant / dossier owner (chủ hồ sơ).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applicant {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// LoaiDoiTuong: "1" công dân, "2" doanh nghiệp, "3" cơ quan nhà nước, "4" tổ chức/khác.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_number: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifiers: Vec<Identifier>,
    /// DVCQG account TechID (MaDoiTuong), only for online dossiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal_account_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub vneid_verified: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fax: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_info: Option<String>,
}

/// DinhDanhCHS entry. `kind` "1" = CCCD (12 digits), "2" = CMND (9 digits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identifier {
    pub kind: String,
    pub number: String,
}

/// TaiLieuNop entry: a submitted file the national side downloads by URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub digitised: Option<bool>,
    /// DuocTaiSuDung "0"/"1"/"2" — semantics not documented (brief §12), passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub from_national_repository: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by_result_code: Option<String>,
}

/// DanhSachTepDinhKemKhac entry (paper documents handed in at the desk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperDocument {
    pub name: String,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub quantity: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// DanhSachLePhi entry. `amount` is in VND (national `Gia`, sent as a string).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fee {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// HinhThucThu: "1" khi tiếp nhận, "2" khi bổ sung, "4" khi trả kết quả.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection_stage: Option<String>,
    #[serde(deserialize_with = "lenient_u64")]
    pub amount: u64,
    /// LoaiPhiLePhi: values differ per counterpart (brief §4.7), passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// DanhSachHoSoBoSung entry (a supplement round). The inner lists' shapes are not documented in
/// the brief, so they are carried as opaque JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Supplement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub documents: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fees: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_due_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_due_at: Option<String>,
}

/// One processing step (CapNhatTienDoHoSoMC `data[]` item, brief §4.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler_title: Option<String>,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    pub status: TrangThaiHoSo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statutory_deadline: Option<String>,
}

/// DanhSachGiayToKetQua entry (result documents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultDocument {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_code: Option<String>,
}

/// Canonical field → national field name, with where the national name was read.
/// `receiving_unit` has no per-record DVCQG field: DVCQG carries it as the envelope `madonvi`.
pub const FIELD_MAP: &[(&str, &str, &str)] = &[
    ("code", "MaHoSo", "DongBoHoSoMC; iGate create"),
    ("procedure_code", "MaTTHC", "DongBoHoSoMC; iGate create"),
    ("procedure_name", "TenTTHC", "DongBoHoSoMC"),
    ("service_code", "MaDichVuCong", "iGate create"),
    ("field_code", "MaLinhVuc", "DongBoHoSoMC"),
    ("field_name", "TenLinhVuc", "DongBoHoSoMC"),
    (
        "receiving_unit",
        "madonvi (envelope) / MaDonViTiepNhan",
        "DVCQG envelope; iGate create",
    ),
    ("processing_unit_name", "DonViXuLy", "DongBoHoSoMC"),
    ("receipt_number", "SoBienNhan", "DongBoHoSoMC"),
    ("channel", "KenhThucHien", "DongBoHoSoMC (TD v2)"),
    ("submission_place", "NoiNopHoSo", "DongBoHoSoMC (TD v2)"),
    ("summary", "TrichYeuHoSo", "DongBoHoSoMC"),
    ("status", "TrangThaiHoSo", "DongBoHoSoMC"),
    (
        "submitted_at",
        "NgayNopHoSo / NgayNop",
        "DongBoHoSoMC (TD v2); iGate",
    ),
    ("received_at", "NgayTiepNhan", "DongBoHoSoMC; iGate create"),
    ("due_at", "NgayHenTra", "DongBoHoSoMC"),
    ("processing_ended_at", "NgayKetThucXuLy", "DongBoHoSoMC"),
    ("returned_at", "NgayTra", "DongBoHoSoMC"),
    ("rejected_at", "NgayTuChoi", "DongBoHoSoMC (TD v2)"),
    ("result_info", "ThongTinTra", "DongBoHoSoMC"),
    ("result_delivery", "HinhThuc", "DongBoHoSoMC"),
    ("note", "GhiChu", "DongBoHoSoMC"),
    (
        "has_digitised_components",
        "HoSoCoThanhPhanSoHoa",
        "DongBoHoSoMC (TD v2)",
    ),
    (
        "online_payment",
        "DuocThanhToanTrucTuyen",
        "DongBoHoSoMC (TD v2)",
    ),
    (
        "connected_databases[]",
        "DSKetNoiCSDL[].MaCSDL",
        "DongBoHoSoMC (TD v2)",
    ),
    ("applicant.name", "ChuHoSo", "DongBoHoSoMC; iGate create"),
    (
        "applicant.kind",
        "LoaiDoiTuong",
        "DongBoHoSoMC; iGate create",
    ),
    (
        "applicant.id_number",
        "SoGiayToChuHoSo",
        "DongBoHoSoMC (TD v2)",
    ),
    (
        "applicant.identifiers[]",
        "DinhDanhCHS[]",
        "DongBoHoSoMC (TD v2)",
    ),
    (
        "applicant.identifiers[].kind",
        "LoaiDinhDanh",
        "DinhDanhCHS",
    ),
    (
        "applicant.identifiers[].number",
        "SoDinhDanh",
        "DinhDanhCHS",
    ),
    ("applicant.portal_account_id", "MaDoiTuong", "DongBoHoSoMC"),
    (
        "applicant.vneid_verified",
        "TaiKhoanDuocXacThucVoiVNeID",
        "DongBoHoSoMC (TD v2)",
    ),
    ("applicant.email", "Email", "DongBoHoSoMC"),
    ("applicant.phone", "SoDienThoai", "DongBoHoSoMC"),
    ("applicant.fax", "Fax", "DongBoHoSoMC"),
    ("applicant.other_info", "ThongTinKhac", "DongBoHoSoMC"),
    ("documents[]", "TaiLieuNop[]", "DongBoHoSoMC"),
    ("documents[].id", "TepDinhKemId", "TaiLieuNop"),
    ("documents[].name", "TenTepDinhKem", "TaiLieuNop"),
    ("documents[].deleted", "IsDeleted", "TaiLieuNop"),
    (
        "documents[].component_code",
        "MaThanhPhanHoSo",
        "TaiLieuNop",
    ),
    ("documents[].url", "DuongDanTaiTepTin", "TaiLieuNop"),
    ("documents[].digitised", "DuocSoHoa", "TaiLieuNop (TD v2)"),
    ("documents[].reuse", "DuocTaiSuDung", "TaiLieuNop (TD v2)"),
    (
        "documents[].from_national_repository",
        "DuocLayTuKhoDMQG",
        "TaiLieuNop (TD v2)",
    ),
    (
        "documents[].replaced_by_result_code",
        "MaKetQuaThayThe",
        "TaiLieuNop (TD v2)",
    ),
    (
        "paper_documents[]",
        "DanhSachTepDinhKemKhac[]",
        "DongBoHoSoMC",
    ),
    (
        "paper_documents[].name",
        "TenGiayTo",
        "DanhSachTepDinhKemKhac",
    ),
    (
        "paper_documents[].quantity",
        "SoLuong",
        "DanhSachTepDinhKemKhac",
    ),
    (
        "paper_documents[].kind",
        "LoaiGiayTo",
        "DanhSachTepDinhKemKhac",
    ),
    ("fees[]", "DanhSachLePhi[]", "DongBoHoSoMC; iGate status"),
    ("fees[].name", "TenPhiLePhi", "DanhSachLePhi"),
    ("fees[].code", "MaPhiLePhi", "DanhSachLePhi"),
    ("fees[].collection_stage", "HinhThucThu", "DanhSachLePhi"),
    ("fees[].amount", "Gia", "DanhSachLePhi"),
    ("fees[].kind", "LoaiPhiLePhi", "DanhSachLePhi"),
    ("supplements[]", "DanhSachHoSoBoSung[]", "DongBoHoSoMC"),
    ("supplements[].id", "HoSoBoSungId", "DanhSachHoSoBoSung"),
    (
        "supplements[].requested_by",
        "NguoiYeuCauBoSung",
        "DanhSachHoSoBoSung",
    ),
    (
        "supplements[].content",
        "NoiDungBoSung",
        "DanhSachHoSoBoSung",
    ),
    (
        "supplements[].requested_at",
        "NgayBoSung",
        "DanhSachHoSoBoSung",
    ),
    (
        "supplements[].received_by",
        "NguoiTiepNhanBoSung",
        "DanhSachHoSoBoSung",
    ),
    (
        "supplements[].receipt_info",
        "ThongTinTiepNhan",
        "DanhSachHoSoBoSung",
    ),
    (
        "supplements[].received_at",
        "NgayTiepNhanBoSung",
        "DanhSachHoSoBoSung",
    ),
    (
        "supplements[].status",
        "TrangThaiBoSung",
        "DanhSachHoSoBoSung",
    ),
    (
        "supplements[].documents",
        "DanhSachGiayToBoSung",
        "DanhSachHoSoBoSung",
    ),
    (
        "supplements[].fees",
        "DanhSachLePhiBoSung",
        "DanhSachHoSoBoSung",
    ),
    (
        "supplements[].previous_due_at",
        "NgayHenTraTruoc",
        "DanhSachHoSoBoSung",
    ),
    (
        "supplements[].new_due_at",
        "NgayHenTraMoi",
        "DanhSachHoSoBoSung",
    ),
    (
        "steps[]",
        "data[] of CapNhatTienDoHoSoMC",
        "CapNhatTienDoHoSoMC",
    ),
    ("steps[].handler", "NguoiXuLy", "CapNhatTienDoHoSoMC"),
    ("steps[].handler_title", "ChucDanh", "CapNhatTienDoHoSoMC"),
    ("steps[].at", "ThoiDiemXuLy", "CapNhatTienDoHoSoMC"),
    ("steps[].department", "PhongBanXuLy", "CapNhatTienDoHoSoMC"),
    ("steps[].content", "NoiDungXuLy", "CapNhatTienDoHoSoMC"),
    ("steps[].status", "TrangThai", "CapNhatTienDoHoSoMC"),
    ("steps[].started_at", "NgayBatDau", "CapNhatTienDoHoSoMC"),
    (
        "steps[].statutory_deadline",
        "NgayKetThucTheoQuyDinh",
        "CapNhatTienDoHoSoMC",
    ),
    ("results[]", "DanhSachGiayToKetQua[]", "DongBoHoSoMC"),
    ("results[].name", "TenGiayTo", "DanhSachGiayToKetQua"),
    (
        "results[].component_code",
        "MaThanhPhanHoSo",
        "DanhSachGiayToKetQua",
    ),
    ("results[].id", "GiayToId", "DanhSachGiayToKetQua"),
    (
        "results[].url",
        "DuongDanTepTinKetQua",
        "DanhSachGiayToKetQua",
    ),
    (
        "results[].result_code",
        "MaGiayToKetQua",
        "DanhSachGiayToKetQua",
    ),
    ("event status.status", "TrangThai", "iGate CapNhatTrangThai"),
    (
        "event status.comment",
        "NoiDungYKien",
        "iGate CapNhatTrangThai",
    ),
    (
        "event status.fees",
        "DanhSachLePhi",
        "iGate CapNhatTrangThai",
    ),
];

// ---------------------------------------------------------------------------------------------
// Status (TrangThaiHoSo) and transitions
// ---------------------------------------------------------------------------------------------

/// National dossier status, `dvcqg-trangthaihoso-codes.csv` (brief §4.7). Serialised as the
/// integer code; accepted as integer or numeric string because DVCQG sends `"2"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrangThaiHoSo {
    /// 1 Mới đăng ký — submitted online, not yet accepted.
    MoiDangKy = 1,
    /// 2 Được tiếp nhận — accepted at the one-stop desk.
    DuocTiepNhan = 2,
    /// 3 Không được tiếp nhận — rejected at intake.
    KhongDuocTiepNhan = 3,
    /// 4 Đang xử lý — with the specialist department.
    DangXuLy = 4,
    /// 5 Yêu cầu bổ sung giấy tờ — supplement requested, clock paused.
    YeuCauBoSung = 5,
    /// 6 Yêu cầu thực hiện nghĩa vụ tài chính — fees/taxes to pay.
    YeuCauNghiaVuTaiChinh = 6,
    /// 7 Công dân yêu cầu rút hồ sơ — withdrawn by the applicant.
    RutHoSo = 7,
    /// 8 Dừng xử lý — processing stopped.
    DungXuLy = 8,
    /// 9 Đã xử lý xong — result ready at the desk.
    DaXuLyXong = 9,
    /// 10 Đã trả kết quả — result handed over.
    DaTraKetQua = 10,
}

impl TrangThaiHoSo {
    pub const ALL: [TrangThaiHoSo; 10] = [
        Self::MoiDangKy,
        Self::DuocTiepNhan,
        Self::KhongDuocTiepNhan,
        Self::DangXuLy,
        Self::YeuCauBoSung,
        Self::YeuCauNghiaVuTaiChinh,
        Self::RutHoSo,
        Self::DungXuLy,
        Self::DaXuLyXong,
        Self::DaTraKetQua,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }

    pub fn name_vi(self) -> &'static str {
        match self {
            Self::MoiDangKy => "Mới đăng ký",
            Self::DuocTiepNhan => "Được tiếp nhận",
            Self::KhongDuocTiepNhan => "Không được tiếp nhận",
            Self::DangXuLy => "Đang xử lý",
            Self::YeuCauBoSung => "Yêu cầu bổ sung giấy tờ",
            Self::YeuCauNghiaVuTaiChinh => "Yêu cầu thực hiện nghĩa vụ tài chính",
            Self::RutHoSo => "Công dân yêu cầu rút hồ sơ",
            Self::DungXuLy => "Dừng xử lý",
            Self::DaXuLyXong => "Đã xử lý xong",
            Self::DaTraKetQua => "Đã trả kết quả",
        }
    }

    /// Statuses after which no further status change is accepted.
    pub fn is_terminal(self) -> bool {
        self.allowed_next().is_empty()
    }

    /// Allowed successors. The brief gives the code list but no normative state machine, so this
    /// is our reading of the one-stop-shop flow (tag \[I\]); a province that needs another edge
    /// should get it through configuration, not by loosening this table silently:
    /// * 1 (online, not yet accepted) → 2 accept, 3 refuse, 5 ask for papers before accepting,
    ///   7 withdrawn.
    /// * 2 accepted → 4 processing, 5, 6, 7, 8, and 9 directly (same-day procedures; TD also
    ///   synthesises a "2" step followed by a final "9").
    /// * 4 processing → 5, 6, 7, 8, 9.
    /// * 5 supplement requested → 2 (supplement at intake completed), 4 (processing resumes),
    ///   3 (refused after an incomplete supplement at intake), 7, 8.
    /// * 6 financial obligation → 4 (paid, processing resumes), 9, 7, 8.
    /// * 9 processed → 10 returned.
    /// * 3, 7, 8, 10 are terminal.
    ///
    /// Re-stating the current status is always allowed (see [`can_transition`]) because several
    /// processing steps happen inside "4 Đang xử lý" and upstream systems resend at least once.
    pub fn allowed_next(self) -> &'static [TrangThaiHoSo] {
        use TrangThaiHoSo::*;
        match self {
            MoiDangKy => &[DuocTiepNhan, KhongDuocTiepNhan, YeuCauBoSung, RutHoSo],
            DuocTiepNhan => &[
                DangXuLy,
                YeuCauBoSung,
                YeuCauNghiaVuTaiChinh,
                RutHoSo,
                DungXuLy,
                DaXuLyXong,
            ],
            DangXuLy => &[
                YeuCauBoSung,
                YeuCauNghiaVuTaiChinh,
                RutHoSo,
                DungXuLy,
                DaXuLyXong,
            ],
            YeuCauBoSung => &[DuocTiepNhan, DangXuLy, KhongDuocTiepNhan, RutHoSo, DungXuLy],
            YeuCauNghiaVuTaiChinh => &[DangXuLy, DaXuLyXong, RutHoSo, DungXuLy],
            DaXuLyXong => &[DaTraKetQua],
            KhongDuocTiepNhan | RutHoSo | DungXuLy | DaTraKetQua => &[],
        }
    }
}

/// Whether a dossier in `from` may move to `to`. Same status → allowed (idempotent re-statement).
pub fn can_transition(from: TrangThaiHoSo, to: TrangThaiHoSo) -> bool {
    from == to || from.allowed_next().contains(&to)
}

impl fmt::Display for TrangThaiHoSo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.name_vi())
    }
}

impl Serialize for TrangThaiHoSo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

impl<'de> Deserialize<'de> for TrangThaiHoSo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let code = match &v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        code.and_then(|c| u8::try_from(c).ok())
            .and_then(TrangThaiHoSo::from_code)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("TrangThaiHoSo must be a code 1..10, got {v}"))
            })
    }
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// Something that happened to an already accepted dossier. Internally tagged:
/// `{"kind":"status",...}`, `{"kind":"step",...}`, `{"kind":"evaluation",...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Status(StatusChange),
    Step(ProcessingStep),
    Evaluation(Evaluation),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Status,
    Step,
    Evaluation,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Status => "status",
            EventKind::Step => "step",
            EventKind::Evaluation => "evaluation",
        }
    }
}

/// Status change (iGate "CapNhatTrangThai"; DVCQG learns it through a dossier update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    pub status: TrangThaiHoSo,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fees: Vec<Fee>,
}

/// Citizen satisfaction evaluation. Gateway-only shape: the brief found no national field
/// names for it (it feeds the QĐ 766 "mức độ hài lòng" group); the 1..=5 scale is an assumption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    pub at: String,
    pub rating: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Status(_) => EventKind::Status,
            Event::Step(_) => EventKind::Step,
            Event::Evaluation(_) => EventKind::Evaluation,
        }
    }

    /// The dossier status this event asserts, if any.
    pub fn status(&self) -> Option<TrangThaiHoSo> {
        match self {
            Event::Status(s) => Some(s.status),
            Event::Step(s) => Some(s.status),
            Event::Evaluation(_) => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// A validation failure, addressed by canonical JSON path (`applicant.identifiers[0].number`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Answer of a procedure catalogue lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogueAnswer {
    Known,
    Unknown,
    /// No catalogue configured, or it cannot answer now. Validation does not fail on this:
    /// refusing citizens' dossiers because a catalogue is down would be worse than a late check.
    Unavailable,
}

/// Procedure catalogue (DVCQG `LayDanhSachTTHC`, cached by the gateway). Synchronous on
/// purpose: implementations answer from an in-memory cache.
pub trait ProcedureCatalogue: Send + Sync {
    fn lookup(&self, procedure_code: &str) -> CatalogueAnswer;
}

/// No catalogue configured: the existence check is skipped.
pub struct NoCatalogue;

impl ProcedureCatalogue for NoCatalogue {
    fn lookup(&self, _procedure_code: &str) -> CatalogueAnswer {
        CatalogueAnswer::Unavailable
    }
}

/// A fixed set of codes. A localised code (`3.000182.000.00.00.H22`) is known when either the
/// exact code or its national part (`3.000182`) is listed.
pub struct StaticCatalogue(pub HashSet<String>);

impl ProcedureCatalogue for StaticCatalogue {
    fn lookup(&self, procedure_code: &str) -> CatalogueAnswer {
        let national = national_procedure_code(procedure_code);
        if self.0.contains(procedure_code) || national.is_some_and(|n| self.0.contains(n)) {
            CatalogueAnswer::Known
        } else {
            CatalogueAnswer::Unknown
        }
    }
}

/// `NNN.NN.NN.XNN` (QĐ 20/2020, brief §9.1), e.g. `000.00.01.H22`.
pub fn is_agency_code(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 13
        && b.iter().enumerate().all(|(i, c)| match i {
            3 | 6 | 9 => *c == b'.',
            10 => c.is_ascii_uppercase(),
            _ => c.is_ascii_digit(),
        })
}

/// 12-digit citizen identity number (CCCD / số định danh cá nhân, brief §9.5). No check digit
/// exists, so only the shape is checked.
pub fn is_citizen_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|c| c.is_ascii_digit())
}

/// National part `d.dddddd` of a procedure code, accepting the localised suffixes seen in the
/// brief (`.000.00.00.H22`, `.H56`). `None` when the shape does not match.
pub fn national_procedure_code(code: &str) -> Option<&str> {
    let b = code.as_bytes();
    if b.len() < 8
        || !b[0].is_ascii_digit()
        || b[1] != b'.'
        || !b[2..8].iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let rest = &b[8..];
    let suffix_ok = rest.is_empty()
        || (rest[0] == b'.'
            && rest.len() > 1
            && rest[1..]
                .iter()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'.'));
    suffix_ok.then(|| &code[..8])
}

fn present(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    fn date(&mut self, path: &str, v: Option<&str>) -> Option<VnDateTime> {
        let v = v?;
        let parsed = VnDateTime::parse_national(v);
        if parsed.is_none() {
            self.err(
                path,
                format!("must be a valid date-time yyyyMMddHHmmss (Vietnam time), got {v:?}"),
            );
        }
        parsed
    }

    fn one_of(&mut self, path: &str, v: Option<&str>, allowed: &[&str]) {
        if let Some(v) = v {
            if !allowed.contains(&v) {
                self.err(path, format!("must be one of {allowed:?}, got {v:?}"));
            }
        }
    }

    fn url(&mut self, path: &str, v: Option<&str>) {
        if let Some(v) = v {
            if !(v.starts_with("https://") || v.starts_with("http://")) {
                self.err(path, "must be an absolute http(s) URL");
            }
        }
    }

    fn required(&mut self, path: &str, v: &str) -> bool {
        if v.trim().is_empty() {
            self.err(path, "is required");
            false
        } else {
            true
        }
    }
}

/// Longest dossier code accepted: codes are keys and appear in URLs; the national formats are
/// ~25 characters.
pub const MAX_CODE_LEN: usize = 64;
/// TrichYeuHoSo length: TD truncates at 995 + "..." (brief §4.4).
pub const MAX_SUMMARY_CHARS: usize = 1000;

/// Validate a dossier. On failure every problem is returned, each naming its field, so the
/// gateway can answer 422 in one round trip.
pub fn validate(d: &Dossier, catalogue: &dyn ProcedureCatalogue) -> Result<(), Vec<FieldError>> {
    let mut c = Checker { errors: Vec::new() };

    if let Some(code) = &d.code {
        check_code(&mut c, "code", code);
    }

    if c.required("procedure_code", &d.procedure_code) {
        if national_procedure_code(&d.procedure_code).is_none() {
            c.err(
                "procedure_code",
                "must look like a national procedure code d.dddddd, optionally localised \
                 (e.g. 2.002492 or 3.000182.000.00.00.H22)",
            );
        } else if catalogue.lookup(&d.procedure_code) == CatalogueAnswer::Unknown {
            c.err("procedure_code", "is not in the procedure catalogue");
        }
    }

    if !is_agency_code(&d.receiving_unit) {
        c.err(
            "receiving_unit",
            "must be an agency electronic identifier NNN.NN.NN.XNN (e.g. 000.00.01.H22)",
        );
    }

    c.one_of("channel", present(&d.channel), &["1", "2", "3"]);
    c.one_of("result_delivery", present(&d.result_delivery), &["0", "1"]);
    c.one_of(
        "online_payment",
        present(&d.online_payment),
        &["0", "1", "3"],
    );
    if let Some(s) = present(&d.summary) {
        if s.chars().count() > MAX_SUMMARY_CHARS {
            c.err(
                "summary",
                format!("must be at most {MAX_SUMMARY_CHARS} characters"),
            );
        }
    }

    let submitted = c.date("submitted_at", present(&d.submitted_at));
    let received = c.date("received_at", present(&d.received_at));
    let due = c.date("due_at", present(&d.due_at));
    c.date("processing_ended_at", present(&d.processing_ended_at));
    c.date("returned_at", present(&d.returned_at));
    c.date("rejected_at", present(&d.rejected_at));
    // Every status except "1 Mới đăng ký" means the desk accepted or refused the dossier, so the
    // intake time exists; the QĐ 766 timeliness indicators are computed from it.
    if received.is_none()
        && present(&d.received_at).is_none()
        && d.status != TrangThaiHoSo::MoiDangKy
    {
        c.err(
            "received_at",
            "is required unless status is 1 (Mới đăng ký)",
        );
    }
    if let (Some(s), Some(r)) = (submitted, received) {
        if r < s {
            c.err("received_at", "must not be before submitted_at");
        }
    }
    if let (Some(r), Some(due)) = (received, due) {
        if due < r {
            c.err("due_at", "must not be before received_at");
        }
    }

    check_applicant(&mut c, &d.applicant);

    for (i, doc) in d.documents.iter().enumerate() {
        let p = format!("documents[{i}]");
        c.required(&format!("{p}.name"), &doc.name);
        c.url(&format!("{p}.url"), present(&doc.url));
        c.one_of(&format!("{p}.reuse"), present(&doc.reuse), &["0", "1", "2"]);
    }
    for (i, paper) in d.paper_documents.iter().enumerate() {
        c.required(&format!("paper_documents[{i}].name"), &paper.name);
    }
    for (i, fee) in d.fees.iter().enumerate() {
        check_fee(&mut c, &format!("fees[{i}]"), fee);
    }
    for (i, s) in d.supplements.iter().enumerate() {
        let p = format!("supplements[{i}]");
        c.date(&format!("{p}.requested_at"), present(&s.requested_at));
        c.date(&format!("{p}.received_at"), present(&s.received_at));
        c.date(&format!("{p}.previous_due_at"), present(&s.previous_due_at));
        c.date(&format!("{p}.new_due_at"), present(&s.new_due_at));
    }
    for (i, step) in d.steps.iter().enumerate() {
        check_step(&mut c, &format!("steps[{i}]"), step);
    }
    for (i, r) in d.results.iter().enumerate() {
        c.required(&format!("results[{i}].name"), &r.name);
        c.url(&format!("results[{i}].url"), present(&r.url));
    }

    if c.errors.is_empty() {
        Ok(())
    } else {
        Err(c.errors)
    }
}

/// Validate an event body (field shapes only; the transition is checked by the store against the
/// dossier's current status).
pub fn validate_event(e: &Event) -> Result<(), Vec<FieldError>> {
    let mut c = Checker { errors: Vec::new() };
    match e {
        Event::Status(s) => {
            c.required("at", &s.at);
            c.date("at", Some(s.at.as_str()).filter(|v| !v.trim().is_empty()));
            for (i, fee) in s.fees.iter().enumerate() {
                check_fee(&mut c, &format!("fees[{i}]"), fee);
            }
        }
        Event::Step(step) => check_step(&mut c, "", step),
        Event::Evaluation(ev) => {
            c.required("at", &ev.at);
            c.date("at", Some(ev.at.as_str()).filter(|v| !v.trim().is_empty()));
            if !(1..=5).contains(&ev.rating) {
                c.err("rating", "must be between 1 and 5");
            }
        }
    }
    if c.errors.is_empty() {
        Ok(())
    } else {
        Err(c.errors)
    }
}

fn check_code(c: &mut Checker, path: &str, code: &str) {
    // Dossier numbers vary per system (brief §9.2): validate loosely and key on the exact string.
    if code.trim().is_empty() {
        c.err(path, "must not be empty when present");
    } else if code.len() > MAX_CODE_LEN {
        c.err(path, format!("must be at most {MAX_CODE_LEN} bytes"));
    } else if code
        .bytes()
        .any(|b| !b.is_ascii_graphic() || b == b'/' || b == b'?' || b == b'#')
    {
        // Visible ASCII only: the code travels in URL paths and in the header fields
        // of deliveries (`Idempotency-Key`), which carry no other text as it is.
        c.err(
            path,
            "must be visible ASCII characters other than '/', '?' and '#'",
        );
    }
}

fn check_applicant(c: &mut Checker, a: &Applicant) {
    c.one_of("applicant.kind", present(&a.kind), &["1", "2", "3", "4"]);
    for (i, id) in a.identifiers.iter().enumerate() {
        let p = format!("applicant.identifiers[{i}]");
        match id.kind.trim() {
            "1" => {
                if !is_citizen_id(&id.number) {
                    c.err(
                        format!("{p}.number"),
                        "a citizen identity number (CCCD) must be exactly 12 digits",
                    );
                }
            }
            "2" => {
                if !(id.number.len() == 9 && id.number.bytes().all(|b| b.is_ascii_digit())) {
                    c.err(
                        format!("{p}.number"),
                        "an old CMND number must be exactly 9 digits",
                    );
                }
            }
            other => c.err(
                format!("{p}.kind"),
                format!("must be \"1\" (CCCD) or \"2\" (CMND), got {other:?}"),
            ),
        }
    }
    // For a citizen (LoaiDoiTuong 1) an all-digit document number of 12 characters is the CCCD;
    // anything else all-digit but of another length is almost certainly a typo.
    if present(&a.kind) == Some("1") {
        if let Some(n) = present(&a.id_number) {
            if n.bytes().all(|b| b.is_ascii_digit()) && n.len() != 12 && n.len() != 9 {
                c.err(
                    "applicant.id_number",
                    "a citizen's identity number must be 12 digits (CCCD) or 9 (old CMND)",
                );
            }
        }
    }
    if let Some(e) = present(&a.email) {
        let ok = e
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !e.contains(' '));
        if !ok {
            c.err("applicant.email", "must be an e-mail address");
        }
    }
    if let Some(p) = present(&a.phone) {
        let digits = p.strip_prefix('+').unwrap_or(p);
        if digits.len() < 8 || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            c.err(
                "applicant.phone",
                "must be 8..15 digits, optionally prefixed by '+'",
            );
        }
    }
}

fn check_fee(c: &mut Checker, p: &str, fee: &Fee) {
    c.required(&format!("{p}.name"), &fee.name);
    c.one_of(
        &format!("{p}.collection_stage"),
        present(&fee.collection_stage),
        &["1", "2", "4"],
    );
}

fn check_step(c: &mut Checker, prefix: &str, s: &ProcessingStep) {
    let p = |f: &str| {
        if prefix.is_empty() {
            f.to_string()
        } else {
            format!("{prefix}.{f}")
        }
    };
    if c.required(&p("at"), &s.at) {
        c.date(&p("at"), Some(s.at.as_str()));
    }
    c.date(&p("started_at"), present(&s.started_at));
    c.date(&p("statutory_deadline"), present(&s.statutory_deadline));
}

/// Parse a canonical dossier body. Shape errors (wrong JSON type, unknown field) are returned as
/// a single `FieldError` with the parser's message, so the gateway can still answer 422.
pub fn parse_dossier(body: &[u8]) -> Result<Dossier, Vec<FieldError>> {
    serde_json::from_slice(body).map_err(|e| vec![FieldError::new("", e.to_string())])
}

/// Parse an event body (see [`parse_dossier`]).
pub fn parse_event(body: &[u8]) -> Result<Event, Vec<FieldError>> {
    serde_json::from_slice(body).map_err(|e| vec![FieldError::new("", e.to_string())])
}

// ---------------------------------------------------------------------------------------------
// Content hashing (idempotency)
// ---------------------------------------------------------------------------------------------

/// Canonical JSON: object keys sorted, no insignificant whitespace, and `null`, `""` and `[]`
/// members dropped, because national senders use `""` for "absent" and a resend that spells
/// absence differently must not count as different content.
pub fn canonical_json(v: &Value) -> String {
    let c = without_empty(v).unwrap_or(Value::Null);
    serde_json::to_string(&c).unwrap_or_default()
}

/// `v` without `null`, `""` and `[]` members (recursively), object keys sorted; `None` when
/// `v` itself is empty. National formats spell "absent" as `""`.
pub fn without_empty(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::Array(a) if a.is_empty() => None,
        Value::Array(a) => Some(Value::Array(
            a.iter()
                .map(|x| without_empty(x).unwrap_or(Value::Null))
                .collect(),
        )),
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                if let Some(x) = without_empty(&m[k]) {
                    out.insert(k.clone(), x);
                }
            }
            Some(Value::Object(out))
        }
        other => Some(other.clone()),
    }
}

/// Hex SHA-256 of the canonical JSON of any serialisable value.
pub fn content_hash<T: Serialize>(value: &T) -> String {
    let v = serde_json::to_value(value).unwrap_or(Value::Null);
    sha256_hex(canonical_json(&v).as_bytes())
}

fn sha256_hex(bytes: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut s = String::with_capacity(64);
    for b in d.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl Dossier {
    /// Idempotency hash of the dossier *content*. The code is excluded: it is the identity, and
    /// a client that resends with the code it was assigned must get the same receipt.
    pub fn content_hash(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.remove("code");
        }
        sha256_hex(canonical_json(&v).as_bytes())
    }
}

// ---------------------------------------------------------------------------------------------
// Vietnam time and dossier codes
// ---------------------------------------------------------------------------------------------

/// Vietnam is UTC+7 all year (no DST), so a fixed offset is exact.
pub const VN_OFFSET_SECS: i64 = 7 * 3600;

/// A calendar date in Asia/Ho_Chi_Minh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VnDate {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

/// A wall-clock date-time in Asia/Ho_Chi_Minh (second precision, as the national formats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VnDateTime {
    pub date: VnDate,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

// Days since 1970-01-01 for a proleptic Gregorian date (era-based arithmetic: 400-year eras of
// 146 097 days, years counted from March so the leap day is last).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(y: i32, m: u8) -> u8 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

impl VnDateTime {
    /// Parse `yyyyMMddHHmmss` with calendar checks (no 31 April, no 25:00).
    pub fn parse_national(s: &str) -> Option<Self> {
        if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n = |a: usize, b: usize| s[a..b].parse::<u32>().ok();
        let year = i32::try_from(n(0, 4)?).ok()?;
        let month = u8::try_from(n(4, 6)?).ok()?;
        let day = u8::try_from(n(6, 8)?).ok()?;
        let hour = u8::try_from(n(8, 10)?).ok()?;
        let minute = u8::try_from(n(10, 12)?).ok()?;
        let second = u8::try_from(n(12, 14)?).ok()?;
        let ok = year >= 1900
            && (1..=12).contains(&month)
            && day >= 1
            && day <= days_in_month(year, month)
            && hour < 24
            && minute < 60
            && second < 60;
        ok.then_some(VnDateTime {
            date: VnDate { year, month, day },
            hour,
            minute,
            second,
        })
    }

    pub fn from_unix_millis(ms: i64) -> Self {
        let secs = ms.div_euclid(1000) + VN_OFFSET_SECS;
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        VnDateTime {
            date: VnDate {
                year: y as i32,
                month: m as u8,
                day: d as u8,
            },
            hour: (sod / 3600) as u8,
            minute: (sod % 3600 / 60) as u8,
            second: (sod % 60) as u8,
        }
    }

    pub fn to_unix_millis(&self) -> i64 {
        let days = days_from_civil(
            i64::from(self.date.year),
            u32::from(self.date.month),
            u32::from(self.date.day),
        );
        let secs = days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
            - VN_OFFSET_SECS;
        secs * 1000
    }

    /// National format `yyyyMMddHHmmss`.
    pub fn format_national(&self) -> String {
        format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}",
            self.date.year, self.date.month, self.date.day, self.hour, self.minute, self.second
        )
    }

    /// RFC 3339 with the explicit +07:00 offset (used in receipts).
    pub fn format_rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+07:00",
            self.date.year, self.date.month, self.date.day, self.hour, self.minute, self.second
        )
    }
}

impl VnDate {
    pub fn from_unix_millis(ms: i64) -> Self {
        VnDateTime::from_unix_millis(ms).date
    }

    /// `yyMMdd`, the date part of a dossier number.
    pub fn yymmdd(&self) -> String {
        format!(
            "{:02}{:02}{:02}",
            self.year.rem_euclid(100),
            self.month,
            self.day
        )
    }

    /// `yyyy-MM-dd`, the key of the per-unit daily sequence.
    pub fn iso(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Dossier number `{agency}-{yyMMdd}-{NNNN}` (brief §9.2). The sequence is zero-padded to four
/// digits; a unit issuing more than 9 999 dossiers a day gets a longer number rather than a
/// collision.
pub fn assign_code(agency: &str, date: VnDate, seq: u32) -> String {
    format!("{agency}-{}-{seq:04}", date.yymmdd())
}

// ---------------------------------------------------------------------------------------------
// Lenient scalars
// ---------------------------------------------------------------------------------------------

fn bool_from_value(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_u64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => match s.trim() {
            "True" | "true" | "1" => Some(true),
            "False" | "false" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let v = Value::deserialize(d)?;
    if matches!(&v, Value::String(s) if s.is_empty()) || v.is_null() {
        return Ok(false);
    }
    bool_from_value(&v).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "expected a boolean (true/false, \"True\"/\"False\", 0/1), got {v}"
        ))
    })
}

fn lenient_opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let v = Value::deserialize(d)?;
    if matches!(&v, Value::String(s) if s.is_empty()) || v.is_null() {
        return Ok(None);
    }
    bool_from_value(&v).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "expected a boolean (true/false, \"True\"/\"False\", 0/1), got {v}"
        ))
    })
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    match &v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if s.trim().is_empty() => Some(0),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        Value::Null => Some(0),
        _ => None,
    }
    .ok_or_else(|| serde::de::Error::custom(format!("expected a non-negative integer, got {v}")))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid dossier shaped after `dvcqg-dongbohosomc-request.json` (synthetic personal data).
    pub(crate) fn sample_dossier() -> Dossier {
        serde_json::from_value(serde_json::json!({
            "code": "000.00.01.H22-250715-0001",
            "procedure_code": "3.000182.000.00.00.H22",
            "procedure_name": "Tuyển sinh trung học cơ sở",
            "field_code": "G03-GD10",
            "field_name": "Giáo dục Trung học",
            "receiving_unit": "000.00.01.H22",
            "processing_unit_name": "Phòng Giáo dục và Đào tạo",
            "channel": "2",
            "summary": "Hồ sơ tuyển sinh lớp 6",
            "status": "2",
            "submitted_at": "20250715080000",
            "received_at": "20250715083000",
            "due_at": "20250722170000",
            "result_delivery": "0",
            "has_digitised_components": "1",
            "online_payment": "0",
            "connected_databases": ["7"],
            "applicant": {
                "name": "Nguyễn Văn A",
                "kind": "1",
                "id_number": "022090000001",
                "identifiers": [{"kind": "1", "number": "022090000001"}],
                "vneid_verified": "0",
                "email": "nguyenvana@example.vn",
                "phone": "0912000000"
            },
            "documents": [{
                "id": "101", "name": "Don-dang-ky.pdf", "deleted": "False",
                "url": "https://motcua.example.gov.vn/download/101",
                "digitised": "1", "reuse": "0", "from_national_repository": "0"
            }],
            "fees": [{"name": "Lệ phí", "code": "1", "collection_stage": "1", "amount": "0", "kind": "1"}],
            "steps": [{
                "handler": "Cán bộ một cửa", "at": "20250715083000",
                "content": "Tiếp nhận hồ sơ", "status": "2"
            }]
        }))
        .expect("sample parses")
    }

    #[test]
    fn sample_is_valid_and_national_spellings_are_accepted() {
        let d = sample_dossier();
        assert_eq!(d.status, TrangThaiHoSo::DuocTiepNhan);
        assert_eq!(d.has_digitised_components, Some(true));
        assert!(!d.documents[0].deleted);
        assert_eq!(validate(&d, &NoCatalogue), Ok(()));
        // Canonical output uses integers/booleans and round-trips.
        let back: Dossier = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn invalid_dossier_names_the_field() {
        let mut d = sample_dossier();
        d.receiving_unit = "H22".into();
        d.applicant.identifiers[0].number = "02209000000".into(); // 11 digits
        d.received_at = Some("20250231083000".into()); // 31 Feb
        d.procedure_code = "2.002492".into();
        d.documents[0].url = Some("ftp://x".into());
        let catalogue = StaticCatalogue(["3.000182".to_string()].into_iter().collect());
        let errs = validate(&d, &catalogue).unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "receiving_unit",
            "applicant.identifiers[0].number",
            "received_at",
            "procedure_code",
            "documents[0].url",
        ] {
            assert!(paths.contains(&p), "missing {p} in {errs:?}");
        }
        // Without a catalogue the unknown procedure is not an error.
        let mut d2 = sample_dossier();
        d2.procedure_code = "2.002492".into();
        assert_eq!(validate(&d2, &NoCatalogue), Ok(()));
        // ...and a localised code is known through its national part.
        assert_eq!(validate(&sample_dossier(), &catalogue), Ok(()));
        // Bad shape of the procedure code.
        d2.procedure_code = "TTHC-1".into();
        assert_eq!(
            validate(&d2, &NoCatalogue).unwrap_err()[0].path,
            "procedure_code"
        );
        // A code travels in paths and header fields: visible ASCII only.
        for bad in ["HỒSƠ-1", "A B", "A/B", "A\u{7f}"] {
            let mut d3 = sample_dossier();
            d3.code = Some(bad.into());
            assert_eq!(
                validate(&d3, &NoCatalogue).unwrap_err()[0].path,
                "code",
                "{bad}"
            );
        }
        // Unknown field is refused at parse time with its name in the message.
        let e = parse_dossier(br#"{"procedure_codee":"x"}"#).unwrap_err();
        assert!(e[0].message.contains("procedure_codee"), "{e:?}");
    }

    #[test]
    fn status_codes_match_the_national_list() {
        let csv = "1,Mới đăng ký\n2,Được tiếp nhận\n3,Không được tiếp nhận\n4,Đang xử lý\n\
                   5,Yêu cầu bổ sung giấy tờ\n6,Yêu cầu thực hiện nghĩa vụ tài chính\n\
                   7,Công dân yêu cầu rút hồ sơ\n8,Dừng xử lý\n9,Đã xử lý xong\n10,Đã trả kết quả";
        for line in csv.lines() {
            let (code, name) = line.trim().split_once(',').unwrap();
            let s = TrangThaiHoSo::from_code(code.parse().unwrap()).unwrap();
            assert_eq!(s.name_vi(), name);
            let parsed: TrangThaiHoSo = serde_json::from_str(&format!("\"{code}\"")).unwrap();
            assert_eq!(parsed, s);
        }
        assert!(TrangThaiHoSo::from_code(0).is_none());
        assert!(serde_json::from_str::<TrangThaiHoSo>("11").is_err());
    }

    #[test]
    fn status_transition_table_is_closed() {
        use TrangThaiHoSo::*;
        assert!(can_transition(MoiDangKy, DuocTiepNhan));
        assert!(can_transition(DangXuLy, DangXuLy));
        assert!(can_transition(YeuCauBoSung, DangXuLy));
        assert!(can_transition(DaXuLyXong, DaTraKetQua));
        assert!(!can_transition(DaTraKetQua, DangXuLy));
        assert!(!can_transition(KhongDuocTiepNhan, DuocTiepNhan));
        assert!(!can_transition(MoiDangKy, DaTraKetQua));
        for s in [KhongDuocTiepNhan, RutHoSo, DungXuLy, DaTraKetQua] {
            assert!(s.is_terminal());
        }
        // Every non-terminal status can eventually reach a terminal one.
        for s in TrangThaiHoSo::ALL {
            let mut seen = vec![s];
            let mut i = 0;
            while i < seen.len() {
                for n in seen[i].allowed_next() {
                    if !seen.contains(n) {
                        seen.push(*n);
                    }
                }
                i += 1;
            }
            assert!(seen.iter().any(|x| x.is_terminal()), "{s} cannot finish");
        }
    }

    #[test]
    fn events_parse_with_kind_tag() {
        let e = parse_event(br#"{"kind":"step","at":"20250715090000","status":"4","handler":"A"}"#)
            .unwrap();
        assert_eq!(e.kind(), EventKind::Step);
        assert_eq!(e.status(), Some(TrangThaiHoSo::DangXuLy));
        let e = parse_event(br#"{"kind":"evaluation","at":"20250716090000","rating":9}"#).unwrap();
        assert_eq!(validate_event(&e).unwrap_err()[0].path, "rating");
        let e = parse_event(br#"{"kind":"status","at":"2025-07-15","status":9}"#).unwrap();
        assert_eq!(validate_event(&e).unwrap_err()[0].path, "at");
        assert!(
            parse_event(br#"{"kind":"status","at":"20250715090000","status":9,"x":1}"#).is_err()
        );
    }

    #[test]
    fn content_hash_ignores_code_and_absent_spellings() {
        let a = sample_dossier();
        let mut b = a.clone();
        b.code = None;
        b.note = Some(String::new());
        assert_eq!(a.content_hash(), b.content_hash());
        b.summary = Some("khác".into());
        assert_ne!(a.content_hash(), b.content_hash());
        assert_eq!(a.content_hash().len(), 64);
    }

    #[test]
    fn code_assignment_uses_vietnam_date() {
        // 2025-07-14T17:30:00Z is already 15 July 00:30 in Hà Nội.
        let ms = days_from_civil(2025, 7, 14) * 86_400_000 + (17 * 3600 + 30 * 60) * 1000;
        let date = VnDate::from_unix_millis(ms);
        assert_eq!(
            assign_code("000.00.01.H22", date, 1),
            "000.00.01.H22-250715-0001"
        );
        assert_eq!(
            assign_code("000.00.01.H22", date, 12345),
            "000.00.01.H22-250715-12345"
        );
        let t = VnDateTime::from_unix_millis(ms);
        assert_eq!(t.format_national(), "20250715003000");
        assert_eq!(t.format_rfc3339(), "2025-07-15T00:30:00+07:00");
        assert_eq!(
            VnDateTime::parse_national("20250715003000")
                .unwrap()
                .to_unix_millis(),
            ms
        );
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for z in [-800_000, -1, 0, 59, 60, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert!(VnDateTime::parse_national("20240229120000").is_some());
        assert!(VnDateTime::parse_national("20250229120000").is_none());
        assert!(is_agency_code("000.00.00.G22"));
        assert!(!is_agency_code("000.00.00.g22"));
    }

    #[test]
    fn field_map_covers_every_national_dossier_key() {
        // Keys of one `data[]` item of dvcqg-dongbohosomc-request.json and of the
        // CapNhatTienDoHoSoMC item (MaHoSo is carried by the dossier).
        let national = [
            "MaHoSo",
            "MaTTHC",
            "TenTTHC",
            "MaLinhVuc",
            "TenLinhVuc",
            "KenhThucHien",
            "SoBienNhan",
            "ChuHoSo",
            "SoGiayToChuHoSo",
            "LoaiDoiTuong",
            "MaDoiTuong",
            "ThongTinKhac",
            "Email",
            "Fax",
            "SoDienThoai",
            "TrichYeuHoSo",
            "NgayNopHoSo",
            "NgayTiepNhan",
            "NgayHenTra",
            "TrangThaiHoSo",
            "NgayTra",
            "ThongTinTra",
            "HinhThuc",
            "NgayKetThucXuLy",
            "NgayTuChoi",
            "DonViXuLy",
            "GhiChu",
            "NoiNopHoSo",
            "HoSoCoThanhPhanSoHoa",
            "TaiKhoanDuocXacThucVoiVNeID",
            "DuocThanhToanTrucTuyen",
            "DinhDanhCHS",
            "DSKetNoiCSDL",
            "TaiLieuNop",
            "DanhSachLePhi",
            "DanhSachTepDinhKemKhac",
            "DanhSachHoSoBoSung",
            "DanhSachGiayToKetQua",
            "LoaiDinhDanh",
            "SoDinhDanh",
            "TepDinhKemId",
            "TenTepDinhKem",
            "IsDeleted",
            "MaThanhPhanHoSo",
            "DuongDanTaiTepTin",
            "DuocSoHoa",
            "DuocTaiSuDung",
            "DuocLayTuKhoDMQG",
            "MaKetQuaThayThe",
            "TenPhiLePhi",
            "MaPhiLePhi",
            "HinhThucThu",
            "Gia",
            "LoaiPhiLePhi",
            "TenGiayTo",
            "GiayToId",
            "MaGiayToKetQua",
            "DuongDanTepTinKetQua",
            "NguoiXuLy",
            "ChucDanh",
            "ThoiDiemXuLy",
            "PhongBanXuLy",
            "NoiDungXuLy",
            "TrangThai",
            "NgayBatDau",
            "NgayKetThucTheoQuyDinh",
        ];
        for key in national {
            assert!(
                FIELD_MAP
                    .iter()
                    .any(|(_, n, _)| n.split(|c: char| !c.is_alphanumeric()).any(|t| t == key)),
                "{key} not mapped"
            );
        }
    }
}
