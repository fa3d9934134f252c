//! The relay's state machine, without I/O: one client command in, what to
//! send upstream and to the client out; then the upstream's response, packet
//! by packet, until it is complete.
//!
//! MySQL's command phase is strictly one command, one response, so the
//! session reads a command, lets [`Relay::on_command`] decide, and when the
//! command is forwarded feeds every upstream packet to
//! [`Relay::on_upstream`] until it reports the response complete. Sequence
//! ids of forwarded packets are renumbered, because the relay may drop
//! packets (rows past the row cap) or replace one (the cap's error).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use hexon_core::Identity;

use super::frame::{self, Packet, u16_at, u32_at};
use crate::acl::{Acl, DatabaseAcl, Role};
use crate::dialect::Dialect;
use crate::layers::PipelineService;
use crate::request::{Admitted, Origin, Refusal, SqlRequest, Stage};
use crate::wire::{self, LogSubject, Outcome};

/// Command bytes (`COM_*`).
pub(crate) mod com {
    pub(crate) const QUIT: u8 = 0x01;
    pub(crate) const INIT_DB: u8 = 0x02;
    pub(crate) const QUERY: u8 = 0x03;
    pub(crate) const FIELD_LIST: u8 = 0x04;
    pub(crate) const PING: u8 = 0x0e;
    pub(crate) const CHANGE_USER: u8 = 0x11;
    pub(crate) const STMT_PREPARE: u8 = 0x16;
    pub(crate) const STMT_EXECUTE: u8 = 0x17;
    pub(crate) const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub(crate) const STMT_CLOSE: u8 = 0x19;
    pub(crate) const STMT_RESET: u8 = 0x1a;
    pub(crate) const SET_OPTION: u8 = 0x1b;
    pub(crate) const STMT_FETCH: u8 = 0x1c;
    pub(crate) const RESET_CONNECTION: u8 = 0x1f;
}

/// MySQL error numbers the bastion answers with.
mod er {
    pub(super) const DBACCESS_DENIED: u16 = 1044;
    pub(super) const PARSE_ERROR: u16 = 1064;
    pub(super) const UNKNOWN_COM: u16 = 1047;
    pub(super) const TOO_BIG_SELECT: u16 = 1104;
    pub(super) const TABLEACCESS_DENIED: u16 = 1142;
    pub(super) const USER_LIMIT_REACHED: u16 = 1226;
    pub(super) const SPECIFIC_ACCESS_DENIED: u16 = 1227;
    pub(super) const UNKNOWN_STMT_HANDLER: u16 = 1243;
    pub(super) const NOT_SUPPORTED_YET: u16 = 1235;
    pub(super) const NET_PACKET_TOO_LARGE: u16 = 1153;
    pub(super) const READ_ONLY_TRANSACTION: u16 = 1792;
}

/// The MySQL error number for a refusal.
fn refusal_code(r: &Refusal) -> u16 {
    match r.stage {
        Stage::Validation | Stage::Parse => er::PARSE_ERROR,
        Stage::RateLimit => er::USER_LIMIT_REACHED,
        Stage::ReadOnly => er::READ_ONLY_TRANSACTION,
        Stage::DatabaseAccess => er::DBACCESS_DENIED,
        Stage::TablePermission => er::TABLEACCESS_DENIED,
        Stage::Complexity => er::TOO_BIG_SELECT,
        _ => er::SPECIFIC_ACCESS_DENIED,
    }
}

/// Who the session is and where it is, fixed at login except for the
/// database (`USE`, `COM_INIT_DB`).
#[derive(Debug, Clone)]
pub(crate) struct SessionInfo {
    pub(crate) identity: Identity,
    pub(crate) db: Arc<DatabaseAcl>,
    pub(crate) role: Arc<Role>,
    pub(crate) acl: Arc<Acl>,
    /// The database account the upstream session is logged in as.
    pub(crate) upstream_user: String,
}

impl SessionInfo {
    fn subject<'a>(&'a self, role: &'a str) -> LogSubject<'a> {
        LogSubject {
            identity: &self.identity,
            database: &self.db.name,
            role,
        }
    }
}

/// What the pipeline decided about a prepared statement.
#[derive(Debug)]
struct Stmt {
    row_cap: Option<u64>,
    normalized: Arc<str>,
    role: Arc<str>,
    /// Rows sent from the statement's open cursor so far.
    cursor_rows: u64,
}

/// The execution whose results are being relayed.
#[derive(Debug)]
struct Exec {
    row_cap: Option<u64>,
    normalized: Arc<str>,
    role: Arc<str>,
    /// Rows counted against the cap (starts above zero for a cursor's
    /// later fetches).
    counted: u64,
    /// Rows forwarded for this command.
    sent: u64,
    over: bool,
    failed: bool,
    /// For the query log ([`crate::wire::log_start`]).
    start: Option<Instant>,
}

impl Exec {
    fn new(row_cap: Option<u64>, normalized: Arc<str>, role: Arc<str>, counted: u64) -> Self {
        Self {
            row_cap,
            normalized,
            role,
            counted,
            sent: 0,
            over: false,
            failed: false,
            start: crate::wire::log_start(),
        }
    }
}

/// Where in a response the relay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The first packet of a result (OK, ERR, or a column count).
    First,
    Columns(u64),
    ColumnsEof,
    Rows,
    /// The first packet of a `COM_STMT_PREPARE` answer.
    PrepareFirst,
    /// Parameter and column definitions still expected, each group's
    /// closing EOF included.
    PrepareDefs {
        params: u32,
        columns: u32,
    },
    /// One packet answers (`COM_PING`, `COM_INIT_DB`, …).
    Single,
}

#[derive(Debug)]
struct Response {
    phase: Phase,
    exec: Option<Exec>,
    /// Statement id whose cursor rows this response counts.
    cursor_of: Option<u32>,
    /// The statement being prepared (`COM_STMT_PREPARE`).
    preparing: Option<Admitted>,
    /// Database to switch to once the upstream says OK.
    switch_to: Option<(Arc<DatabaseAcl>, Arc<Role>)>,
    /// The next packet continues a 16 MiB payload.
    continuing: bool,
    /// The logical packet in progress is being dropped.
    dropping: bool,
    /// The client's answer is complete (an error replaced the rest):
    /// drop what the upstream still sends for this command.
    swallow: bool,
}

impl Response {
    fn new(phase: Phase) -> Self {
        Self {
            phase,
            exec: None,
            cursor_of: None,
            preparing: None,
            switch_to: None,
            continuing: false,
            dropping: false,
            swallow: false,
        }
    }
}

/// What the session does after a client command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Write `up` to the upstream, then feed its packets to
    /// [`Relay::on_upstream`] until it returns [`Upstream::Done`].
    Forward,
    /// Write `up` to the upstream; no answer comes.
    ForwardOnly,
    /// The client's answer is in `cl`; nothing goes upstream.
    Answered,
    /// Write out `cl` (and `up`), then close the session.
    Close,
}

/// What the session does after an upstream packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upstream {
    /// More packets belong to this response.
    More,
    /// The response is complete.
    Done,
    /// The response is complete and the upstream session was reset
    /// (`COM_RESET_CONNECTION`): the session pins it again.
    DoneReset,
    /// The upstream broke the protocol: write out `cl` and close.
    Close,
}

/// The relay state of one session.
pub(crate) struct Relay {
    info: SessionInfo,
    pipeline: PipelineService,
    /// By the id the server gave (foldhash: looked up at every execute).
    statements: HashMap<u32, Stmt, foldhash::fast::RandomState>,
    response: Option<Response>,
    /// The command is `COM_RESET_CONNECTION`.
    resetting: bool,
    /// Sequence id of the next packet to the client.
    seq: u8,
    /// Status flags of the last upstream answer (for our own OK packets).
    status: u16,
    /// Run on the identity before every statement.
    check: Option<crate::wire::IdentityCheck>,
    /// Statements done, for the query log ([`Relay::log_finished`]).
    finished: wire::Finished,
}

/// Whether a `COM_STMT_PREPARE` answer is complete.
fn prepare_state(r: &Response) -> Upstream {
    match r.phase {
        Phase::PrepareDefs {
            params: 0,
            columns: 0,
        } => Upstream::Done,
        _ => Upstream::More,
    }
}

/// Quote a database name for `USE`.
fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

impl Relay {
    pub(crate) fn new(info: SessionInfo, pipeline: PipelineService) -> Self {
        Self {
            info,
            pipeline,
            statements: HashMap::default(),
            response: None,
            resetting: false,
            seq: 1,
            status: frame::SERVER_STATUS_AUTOCOMMIT,
            check: None,
            finished: wire::Finished::default(),
        }
    }

    /// The refusal when the identity check no longer accepts the caller.
    fn revoked_now(&self) -> Option<Refusal> {
        let reason = self.check.as_ref()?(&self.info.identity).err()?;
        Some(crate::wire::revoked(&self.info.identity, reason))
    }

    /// Run `check` on the identity before every statement.
    pub(crate) fn with_check(mut self, check: Option<crate::wire::IdentityCheck>) -> Self {
        self.check = check;
        self
    }

    /// The session's role is read-only.
    pub(crate) fn read_only(&self) -> bool {
        self.info.role.read_only()
    }

    /// The database the session is on (its name in the ACL).
    pub(crate) fn database(&self) -> &str {
        &self.info.db.name
    }

    fn err(&mut self, cl: &mut BytesMut, code: u16, sqlstate: &str, message: &str) {
        frame::error(cl, self.seq, code, sqlstate, message);
        self.seq = self.seq.wrapping_add(1);
    }

    /// Relay one physical packet (renumbered).
    fn send(&mut self, cl: &mut BytesMut, payload: &[u8]) {
        frame::forward(cl, self.seq, payload);
        self.seq = self.seq.wrapping_add(1);
    }

    fn refuse(&mut self, cl: &mut BytesMut, req: &SqlRequest, r: &Refusal) {
        let statement = wire::refused_statement(&self.info.acl, req, r);
        self.log_finished();
        wire::log_refused(&self.info.subject(&self.info.role.name), r, &statement);
        self.err(cl, refusal_code(r), r.sqlstate(), &r.reason);
    }

    fn decide(&mut self, sql: String, origin: Origin) -> (Result<Admitted, Refusal>, SqlRequest) {
        let req = SqlRequest::new(
            self.info.identity.clone(),
            self.info.db.name.clone(),
            sql,
            Dialect::Mysql,
        )
        .with_origin(origin);
        if let Some(r) = self.revoked_now() {
            return (Err(r), req);
        }
        let verdict = crate::layers::decide_now(&mut self.pipeline, req.clone());
        (verdict, req)
    }

    /// Decide on one client command (a whole packet, sequence id 0).
    pub(crate) fn on_command(&mut self, p: Packet, up: &mut BytesMut, cl: &mut BytesMut) -> Step {
        self.seq = p.seq.wrapping_add(1);
        self.resetting = false;
        if p.continues() {
            self.err(
                cl,
                er::NET_PACKET_TOO_LARGE,
                "08S01",
                "commands longer than 16 MiB are not supported by the bastion",
            );
            return Step::Close;
        }
        let payload = &p.payload[..];
        let Some(&command) = payload.first() else {
            self.err(cl, er::UNKNOWN_COM, "08S01", "empty command packet");
            return Step::Close;
        };
        match command {
            com::QUIT => {
                frame::forward(up, 0, payload);
                Step::Close
            }
            com::QUERY => {
                let Ok(sql) = std::str::from_utf8(payload.get(1..).unwrap_or_default()) else {
                    return self.refuse_text(cl, "the statement is not valid UTF-8");
                };
                self.query(sql.to_owned(), up, cl)
            }
            com::INIT_DB => {
                let Ok(name) = std::str::from_utf8(payload.get(1..).unwrap_or_default()) else {
                    return self.refuse_text(cl, "the database name is not valid UTF-8");
                };
                // The same checks as `USE name`.
                self.query(format!("USE {}", quote_ident(name)), up, cl)
            }
            com::STMT_PREPARE => {
                let Ok(sql) = std::str::from_utf8(payload.get(1..).unwrap_or_default()) else {
                    return self.refuse_text(cl, "the statement is not valid UTF-8");
                };
                self.prepare(sql.to_owned(), up, cl)
            }
            com::STMT_EXECUTE => self.run_statement(payload, up, cl, false),
            com::STMT_FETCH => self.run_statement(payload, up, cl, true),
            com::STMT_SEND_LONG_DATA | com::STMT_CLOSE => {
                let id = u32_at(payload, 1);
                match id {
                    Some(id) if self.statements.contains_key(&id) => {
                        if command == com::STMT_CLOSE {
                            self.statements.remove(&id);
                        }
                        frame::forward(up, 0, payload);
                        Step::ForwardOnly
                    }
                    // No answer is expected: drop it, as a server would.
                    _ => Step::Answered,
                }
            }
            com::STMT_RESET => match u32_at(payload, 1) {
                Some(id) if self.statements.contains_key(&id) => {
                    if let Some(s) = self.statements.get_mut(&id) {
                        s.cursor_rows = 0;
                    }
                    self.forward(payload, up, Phase::Single)
                }
                _ => self.unknown_statement(cl),
            },
            com::PING => self.forward(payload, up, Phase::Single),
            com::SET_OPTION => match u16_at(payload, 1) {
                // MYSQL_OPTION_MULTI_STATEMENTS_OFF
                Some(1) => self.forward(payload, up, Phase::Single),
                _ => {
                    self.err(
                        cl,
                        er::SPECIFIC_ACCESS_DENIED,
                        "42000",
                        "the bastion does not allow multi-statements: send one statement per query",
                    );
                    Step::Answered
                }
            },
            com::RESET_CONNECTION => {
                // The server drops its prepared statements and session
                // settings; the session pins its settings again after.
                self.statements.clear();
                self.resetting = true;
                self.forward(payload, up, Phase::Single)
            }
            com::CHANGE_USER => {
                self.err(
                    cl,
                    er::SPECIFIC_ACCESS_DENIED,
                    "28000",
                    "COM_CHANGE_USER is refused by the bastion: connect again as the other user",
                );
                Step::Close
            }
            com::FIELD_LIST => {
                self.err(
                    cl,
                    er::NOT_SUPPORTED_YET,
                    "42000",
                    "COM_FIELD_LIST is not supported by the bastion: use SHOW COLUMNS (with the mysql client, pass -A)",
                );
                Step::Answered
            }
            other => {
                self.err(
                    cl,
                    er::UNKNOWN_COM,
                    "08S01",
                    &format!("command 0x{other:02x} is refused by the bastion"),
                );
                Step::Answered
            }
        }
    }

    fn refuse_text(&mut self, cl: &mut BytesMut, message: &str) -> Step {
        self.refuse_bare(cl, &Refusal::new(Stage::Validation, "encoding", message))
    }

    /// Refuse a command that carries no statement text to log.
    fn refuse_bare(&mut self, cl: &mut BytesMut, r: &Refusal) -> Step {
        let req = SqlRequest::new(
            self.info.identity.clone(),
            self.info.db.name.clone(),
            "",
            Dialect::Mysql,
        );
        self.refuse(cl, &req, r);
        Step::Answered
    }

    fn unknown_statement(&mut self, cl: &mut BytesMut) -> Step {
        self.err(
            cl,
            er::UNKNOWN_STMT_HANDLER,
            "HY000",
            "unknown prepared statement handler: prepare the statement through the bastion first",
        );
        Step::Answered
    }

    fn forward(&mut self, payload: &[u8], up: &mut BytesMut, phase: Phase) -> Step {
        frame::forward(up, 0, payload);
        self.response = Some(Response::new(phase));
        Step::Forward
    }

    fn exec_from(&self, a: &Admitted) -> Exec {
        Exec::new(
            // The role's row limit backs the pipeline's cap on every result.
            a.row_cap.or(self.info.role.row_limit()),
            a.normalized.clone(),
            a.role.clone(),
            0,
        )
    }

    fn query(&mut self, sql: String, up: &mut BytesMut, cl: &mut BytesMut) -> Step {
        let (verdict, req) = self.decide(sql, Origin::Simple);
        let a = match verdict {
            Ok(a) => a,
            Err(r) => {
                self.refuse(cl, &req, &r);
                return Step::Answered;
            }
        };
        if let Some(target) = a.switches_database.clone() {
            return self.switch(&a, &target, &req, up, cl);
        }
        frame::put_command(up, com::QUERY, a.sql.as_bytes());
        let mut r = Response::new(Phase::First);
        r.exec = Some(self.exec_from(&a));
        self.response = Some(r);
        Step::Forward
    }

    /// `USE db` / `COM_INIT_DB`, admitted by the pipeline: switch when the
    /// target is on the same server and account, as `COM_INIT_DB` with the
    /// target's name on the server.
    fn switch(
        &mut self,
        a: &Admitted,
        target: &str,
        req: &SqlRequest,
        up: &mut BytesMut,
        cl: &mut BytesMut,
    ) -> Step {
        let resolved = self.info.acl.database(target).and_then(|db| {
            let role = db.role_for(&self.info.identity)?;
            let user = role
                .config()
                .upstream_user
                .as_deref()
                .unwrap_or(self.info.identity.username());
            let same_account = db.upstream == self.info.db.upstream
                && user == self.info.upstream_user
                && role.config().upstream_password == self.info.role.config().upstream_password
                // The server session was pinned read-only (or not) at login.
                && role.read_only() == self.info.role.read_only();
            same_account.then(|| (db.clone(), role.clone()))
        });
        let Some((db, role)) = resolved else {
            let r = Refusal::new(
                Stage::DatabaseAccess,
                "switch_account",
                format!(
                    "database {target:?} is reached through another server or account: connect to it directly (mysql -D {target})"
                ),
            );
            self.refuse(cl, req, &r);
            return Step::Answered;
        };
        frame::put_command(up, com::INIT_DB, db.upstream_database.as_bytes());
        let mut r = Response::new(Phase::Single);
        r.exec = Some(self.exec_from(a));
        r.switch_to = Some((db, role));
        self.response = Some(r);
        Step::Forward
    }

    fn prepare(&mut self, sql: String, up: &mut BytesMut, cl: &mut BytesMut) -> Step {
        let (verdict, req) = self.decide(sql, Origin::Prepare);
        let a = match verdict {
            Ok(a) if a.switches_database.is_some() => {
                let r = Refusal::new(
                    Stage::DatabaseAccess,
                    "prepared_use",
                    "USE cannot be prepared: send it as a plain statement",
                );
                self.refuse(cl, &req, &r);
                return Step::Answered;
            }
            Ok(a) => a,
            Err(r) => {
                self.refuse(cl, &req, &r);
                return Step::Answered;
            }
        };
        frame::put_command(up, com::STMT_PREPARE, a.sql.as_bytes());
        let mut r = Response::new(Phase::PrepareFirst);
        r.preparing = Some(a);
        self.response = Some(r);
        Step::Forward
    }

    /// `COM_STMT_EXECUTE` (a new execution: the statement's cursor starts
    /// over) or `COM_STMT_FETCH` (more rows from its cursor, counted on top
    /// of those already sent).
    fn run_statement(
        &mut self,
        payload: &[u8],
        up: &mut BytesMut,
        cl: &mut BytesMut,
        fetch: bool,
    ) -> Step {
        // A statement prepared earlier runs again: the identity must still
        // be accepted.
        if let Some(r) = self.revoked_now() {
            return self.refuse_bare(cl, &r);
        }
        let Some(id) = u32_at(payload, 1) else {
            return self.unknown_statement(cl);
        };
        let Some(s) = self.statements.get_mut(&id) else {
            return self.unknown_statement(cl);
        };
        if !fetch {
            s.cursor_rows = 0;
        }
        let exec = Exec::new(
            s.row_cap,
            s.normalized.clone(),
            s.role.clone(),
            s.cursor_rows,
        );
        frame::forward(up, 0, payload);
        let mut r = Response::new(if fetch { Phase::Rows } else { Phase::First });
        r.exec = Some(exec);
        r.cursor_of = Some(id);
        self.response = Some(r);
        Step::Forward
    }

    /// Relay one upstream packet of the current response.
    pub(crate) fn on_upstream(&mut self, p: &Packet, cl: &mut BytesMut) -> Upstream {
        let Some(mut r) = self.response.take() else {
            // Nothing was asked: a server only sends unprompted packets
            // when it closes the connection (an ERR, e.g. on shutdown).
            if p.kind() == Some(0xFF) {
                self.send(cl, &p.payload);
            }
            return Upstream::Close;
        };
        let verdict = self.step(&mut r, p, cl);
        match verdict {
            Upstream::More => self.response = Some(r),
            _ => self.finish(r),
        }
        if verdict == Upstream::Done && self.resetting {
            self.resetting = false;
            return Upstream::DoneReset;
        }
        verdict
    }

    fn forward_packet(&mut self, r: &Response, p: &Packet, cl: &mut BytesMut) {
        if !r.swallow {
            self.send(cl, &p.payload);
        }
    }

    fn step(&mut self, r: &mut Response, p: &Packet, cl: &mut BytesMut) -> Upstream {
        let payload = &p.payload[..];
        if r.continuing {
            r.continuing = p.continues();
            if !r.dropping {
                self.forward_packet(r, p, cl);
            }
            return Upstream::More;
        }
        r.continuing = p.continues();
        r.dropping = false;
        let kind = payload.first().copied();
        match r.phase {
            Phase::Single => {
                if kind == Some(0x00) {
                    if let Some(s) = frame::ok_status(payload) {
                        self.status = s;
                    }
                    if let Some((db, role)) = r.switch_to.take() {
                        self.info.db = db;
                        self.info.role = role;
                    }
                } else if kind == Some(0xFF) {
                    if let Some(e) = r.exec.as_mut() {
                        e.failed = true;
                    }
                }
                self.forward_packet(r, p, cl);
                Upstream::Done
            }
            Phase::First => match kind {
                Some(0x00) => {
                    let status = frame::ok_status(payload).unwrap_or(0);
                    self.status = status;
                    self.forward_packet(r, p, cl);
                    if status & frame::SERVER_MORE_RESULTS_EXISTS != 0 {
                        Upstream::More
                    } else {
                        Upstream::Done
                    }
                }
                Some(0xFF) => {
                    if let Some(e) = r.exec.as_mut() {
                        e.failed = true;
                    }
                    self.forward_packet(r, p, cl);
                    Upstream::Done
                }
                Some(0xFB) => {
                    // LOCAL INFILE: the bastion never lets a client offer
                    // files (CLIENT_LOCAL_FILES is stripped), so a server
                    // asking is broken or hostile.
                    self.err(
                        cl,
                        er::SPECIFIC_ACCESS_DENIED,
                        "08S01",
                        "the database server asked for a local file; the bastion never sends files",
                    );
                    Upstream::Close
                }
                _ => {
                    let mut rest = payload;
                    match frame::lenenc(&mut rest) {
                        Some(n) if n > 0 && n <= 4096 && rest.is_empty() => {
                            r.phase = Phase::Columns(n);
                            self.forward_packet(r, p, cl);
                            Upstream::More
                        }
                        _ => self.broken(cl, "an invalid result header"),
                    }
                }
            },
            Phase::Columns(n) => {
                r.phase = if n > 1 {
                    Phase::Columns(n - 1)
                } else {
                    Phase::ColumnsEof
                };
                self.forward_packet(r, p, cl);
                Upstream::More
            }
            Phase::ColumnsEof => {
                if !frame::is_eof(payload) {
                    return self.broken(cl, "no EOF after the column definitions");
                }
                let status = frame::eof_status(payload);
                self.forward_packet(r, p, cl);
                if status & frame::SERVER_STATUS_CURSOR_EXISTS != 0 {
                    // A cursor was opened: rows come with COM_STMT_FETCH.
                    self.status = status;
                    return Upstream::Done;
                }
                r.phase = Phase::Rows;
                Upstream::More
            }
            Phase::Rows => {
                if kind == Some(0xFF) {
                    if let Some(e) = r.exec.as_mut() {
                        e.failed = true;
                    }
                    self.forward_packet(r, p, cl);
                    return Upstream::Done;
                }
                if frame::is_eof(payload) {
                    let status = frame::eof_status(payload);
                    self.status = status;
                    let over = r.exec.as_ref().is_some_and(|e| e.over);
                    if over && !r.swallow {
                        let (cap, role) = r
                            .exec
                            .as_ref()
                            .map(|e| (e.row_cap.unwrap_or(0), e.role.clone()))
                            .unwrap_or((0, "".into()));
                        self.err(
                            cl,
                            er::TOO_BIG_SELECT,
                            "54000",
                            &format!(
                                "the result exceeds the row cap of {cap} rows for role {role:?}; add a LIMIT or narrow the query"
                            ),
                        );
                        r.swallow = true;
                    } else {
                        self.forward_packet(r, p, cl);
                    }
                    if status & frame::SERVER_MORE_RESULTS_EXISTS != 0 {
                        r.phase = Phase::First;
                        return Upstream::More;
                    }
                    return Upstream::Done;
                }
                // A row.
                let mut drop = r.swallow;
                if let Some(e) = r.exec.as_mut() {
                    if e.row_cap.is_some_and(|cap| e.counted >= cap) {
                        e.over = true;
                        drop = true;
                    } else {
                        e.counted += 1;
                        e.sent += 1;
                    }
                }
                if drop {
                    r.dropping = true;
                } else {
                    self.forward_packet(r, p, cl);
                }
                Upstream::More
            }
            Phase::PrepareFirst => match kind {
                Some(0x00) => {
                    let (Some(id), Some(columns), Some(params)) =
                        (u32_at(payload, 1), u16_at(payload, 5), u16_at(payload, 7))
                    else {
                        return self.broken(cl, "an invalid COM_STMT_PREPARE answer");
                    };
                    if let Some(a) = r.preparing.take() {
                        self.statements.insert(
                            id,
                            Stmt {
                                row_cap: a.row_cap.or(self.info.role.row_limit()),
                                normalized: a.normalized,
                                role: a.role,
                                cursor_rows: 0,
                            },
                        );
                    }
                    self.forward_packet(r, p, cl);
                    let group = |n: u16| if n == 0 { 0 } else { u32::from(n) + 1 };
                    r.phase = Phase::PrepareDefs {
                        params: group(params),
                        columns: group(columns),
                    };
                    prepare_state(r)
                }
                Some(0xFF) => {
                    self.forward_packet(r, p, cl);
                    Upstream::Done
                }
                _ => self.broken(cl, "an invalid COM_STMT_PREPARE answer"),
            },
            Phase::PrepareDefs { params, columns } => {
                // Each group of definitions is closed by an EOF; the counts
                // include it.
                let eof = frame::is_eof(payload);
                let (params, columns) = match (params, columns) {
                    (1, c) if eof => (0, c),
                    (p, c) if p > 1 && !eof => (p - 1, c),
                    (0, 1) if eof => (0, 0),
                    (0, c) if c > 1 && !eof => (0, c - 1),
                    _ => return self.broken(cl, "an invalid COM_STMT_PREPARE answer"),
                };
                r.phase = Phase::PrepareDefs { params, columns };
                self.forward_packet(r, p, cl);
                prepare_state(r)
            }
        }
    }

    fn broken(&mut self, cl: &mut BytesMut, what: &str) -> Upstream {
        self.err(
            cl,
            er::SPECIFIC_ACCESS_DENIED,
            "08S01",
            &format!("the database server sent {what}; the session is closed"),
        );
        Upstream::Close
    }

    fn finish(&mut self, r: Response) {
        let Some(e) = r.exec else {
            return;
        };
        if let Some(id) = r.cursor_of {
            if let Some(s) = self.statements.get_mut(&id) {
                s.cursor_rows = e.counted;
            }
        }
        let outcome = Outcome::of(e.over, e.failed);
        self.finished
            .push(&e.role, &e.normalized, e.start, e.sent, outcome);
    }

    /// Log the statements whose results are relayed: the session calls
    /// this once it has written to the client ([`wire::Finished`]).
    pub(crate) fn log_finished(&mut self) {
        self.finished.log(&self.info.identity, &self.info.db.name);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.log_finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Pipeline;

    const ACL: &str = r#"
[[databases]]
name = "shop"
dialect = "mysql"
upstream = "db:3306"
upstream_database = "shop_real"
[[databases.roles]]
name = "reader"
groups = ["g"]
read_only = true
row_limit = 2
upstream_user = "ro"
tables = [{ name = "shop.*", ops = ["select"] }]

[[databases]]
name = "shop2"
dialect = "mysql"
upstream = "db:3306"
upstream_database = "shop2_real"
[[databases.roles]]
name = "reader2"
groups = ["g"]
read_only = true
upstream_user = "ro"
tables = [{ name = "shop2.*", ops = ["select"] }]

[[databases]]
name = "far"
dialect = "mysql"
upstream = "elsewhere:3306"
[[databases.roles]]
name = "far"
groups = ["g"]
read_only = true
upstream_user = "ro"
tables = [{ name = "far.*", ops = ["select"] }]
"#;

    fn relay() -> Relay {
        let acl = Arc::new(Acl::from_toml(ACL).unwrap());
        let identity = Identity::builder("u", "alice")
            .groups(["g"])
            .build()
            .unwrap();
        let db = acl.database("shop").unwrap().clone();
        let role = db.role_for(&identity).unwrap().clone();
        let info = SessionInfo {
            identity,
            db,
            role,
            acl: acl.clone(),
            upstream_user: "ro".into(),
        };
        Relay::new(info, Pipeline::build(acl, 16))
    }

    fn cmd(payload: &[u8]) -> Packet {
        Packet {
            seq: 0,
            payload: BytesMut::from(payload),
        }
    }

    fn pkt(seq: u8, payload: &[u8]) -> Packet {
        Packet {
            seq,
            payload: BytesMut::from(payload),
        }
    }

    /// Every packet in `b`: (seq, payload).
    fn packets(b: &BytesMut) -> Vec<(u8, Vec<u8>)> {
        let mut b = b.clone();
        let mut v = Vec::new();
        while let Some(p) = frame::take(&mut b, usize::MAX).unwrap() {
            v.push((p.seq, p.payload.to_vec()));
        }
        v
    }

    fn query(r: &mut Relay, sql: &str) -> (Step, BytesMut, BytesMut) {
        let mut payload = vec![com::QUERY];
        payload.extend_from_slice(sql.as_bytes());
        let (mut up, mut cl) = (BytesMut::new(), BytesMut::new());
        let step = r.on_command(cmd(&payload), &mut up, &mut cl);
        (step, up, cl)
    }

    fn error_code(cl: &BytesMut) -> u16 {
        let p = packets(cl);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].1[0], 0xFF);
        frame::error_fields(&p[0].1).0
    }

    const EOF: &[u8] = &[0xFE, 0, 0, 2, 0];

    #[test]
    fn admitted_queries_go_upstream_in_canonical_form() {
        let mut r = relay();
        let (step, up, cl) = query(&mut r, "select  id from orders -- hi");
        assert_eq!(step, Step::Forward);
        assert!(cl.is_empty());
        let p = packets(&up);
        assert_eq!(p[0].0, 0);
        assert_eq!(&p[0].1[1..], b"SELECT id FROM orders LIMIT 2");
    }

    #[test]
    fn refusals_answer_with_mysql_errors() {
        let mut r = relay();
        for (sql, code) in [
            ("insert into orders values (1)", er::READ_ONLY_TRANSACTION),
            ("select 1; select 2", er::PARSE_ERROR),
            ("select * from mysql.user", er::DBACCESS_DENIED),
            // `shop` is `shop_real` on the server: `shop.t` would name
            // another database there.
            ("select * from shop.orders", er::DBACCESS_DENIED),
            ("select * from /*!50000 orders */", er::PARSE_ERROR),
        ] {
            let (step, up, cl) = query(&mut r, sql);
            assert_eq!(step, Step::Answered, "{sql}");
            assert!(up.is_empty(), "{sql}");
            assert_eq!(error_code(&cl), code, "{sql}");
            assert_eq!(packets(&cl)[0].0, 1, "sequence id follows the command");
        }
        let (step, _, cl) = r_on(&mut r, &[com::QUERY, 0xC3, 0x28]);
        assert_eq!((step, error_code(&cl)), (Step::Answered, er::PARSE_ERROR));
    }

    fn r_on(r: &mut Relay, payload: &[u8]) -> (Step, BytesMut, BytesMut) {
        let (mut up, mut cl) = (BytesMut::new(), BytesMut::new());
        let step = r.on_command(cmd(payload), &mut up, &mut cl);
        (step, up, cl)
    }

    #[test]
    fn protocol_level_tricks_are_refused() {
        let mut r = relay();
        // Turning multi-statements on.
        let (step, up, cl) = r_on(&mut r, &[com::SET_OPTION, 0, 0]);
        assert!(up.is_empty());
        assert_eq!(
            (step, error_code(&cl)),
            (Step::Answered, er::SPECIFIC_ACCESS_DENIED)
        );
        // ... and off is fine.
        assert_eq!(r_on(&mut r, &[com::SET_OPTION, 1, 0]).0, Step::Forward);
        r.response = None;
        // Changing user closes the session.
        let (step, up, _) = r_on(&mut r, &[com::CHANGE_USER, b'r', b'o', b'o', b't', 0]);
        assert_eq!(step, Step::Close);
        assert!(up.is_empty());
        // Statement ids that were never prepared through the bastion.
        for c in [com::STMT_EXECUTE, com::STMT_FETCH, com::STMT_RESET] {
            let (step, up, cl) = r_on(&mut r, &[c, 1, 0, 0, 0, 0, 1, 0, 0, 0]);
            assert!(up.is_empty());
            assert_eq!(
                (step, error_code(&cl)),
                (Step::Answered, er::UNKNOWN_STMT_HANDLER)
            );
        }
        // No answer is expected for these: dropped silently.
        for c in [com::STMT_SEND_LONG_DATA, com::STMT_CLOSE] {
            let (step, up, cl) = r_on(&mut r, &[c, 9, 0, 0, 0]);
            assert_eq!(step, Step::Answered);
            assert!(up.is_empty() && cl.is_empty());
        }
        // Field lists, replication, shutdown, unknown commands.
        for c in [com::FIELD_LIST, 0x12, 0x08, 0x0c, 0xfa, 0x00] {
            let (step, up, cl) = r_on(&mut r, &[c, 0, 0, 0, 0]);
            assert!(up.is_empty(), "{c}");
            assert_eq!(step, Step::Answered, "{c}");
            assert_eq!(packets(&cl)[0].1[0], 0xFF, "{c}");
        }
        // An empty packet and a 16 MiB one close the session.
        assert_eq!(r_on(&mut r, &[]).0, Step::Close);
        let mut big = cmd(&[]);
        big.payload = BytesMut::zeroed(frame::MAX_PAYLOAD);
        big.payload[0] = com::QUERY;
        let (mut up, mut cl) = (BytesMut::new(), BytesMut::new());
        assert_eq!(r.on_command(big, &mut up, &mut cl), Step::Close);
        assert!(up.is_empty());
    }

    #[test]
    fn result_sets_are_relayed_and_capped() {
        let mut r = relay();
        // The pipeline injects LIMIT 2; a server that sends more anyway
        // still meets the wire cap of 2 rows.
        let (step, _, _) = query(&mut r, "select id from orders");
        assert_eq!(step, Step::Forward);
        let mut cl = BytesMut::new();
        let mut seq = 1;
        let mut feed = |r: &mut Relay, payload: &[u8], cl: &mut BytesMut| {
            let v = r.on_upstream(&pkt(seq, payload), cl);
            seq += 1;
            v
        };
        assert_eq!(feed(&mut r, &[1], &mut cl), Upstream::More);
        assert_eq!(feed(&mut r, b"\x03defcol", &mut cl), Upstream::More);
        assert_eq!(feed(&mut r, EOF, &mut cl), Upstream::More);
        for row in [b"\x011", b"\x012", b"\x013", b"\x014"] {
            assert_eq!(feed(&mut r, row, &mut cl), Upstream::More);
        }
        assert_eq!(feed(&mut r, EOF, &mut cl), Upstream::Done);
        let p = packets(&cl);
        // count, column, EOF, two rows, the cap's error instead of the EOF.
        assert_eq!(p.len(), 6, "{p:?}");
        assert_eq!(&p[3].1, b"\x011");
        assert_eq!(&p[4].1, b"\x012");
        assert_eq!(p[5].1[0], 0xFF);
        assert_eq!(frame::error_fields(&p[5].1).0, er::TOO_BIG_SELECT);
        // Sequence ids are consecutive although rows were dropped.
        let seqs: Vec<u8> = p.iter().map(|x| x.0).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn more_results_after_a_capped_result_are_swallowed() {
        let mut r = relay();
        query(&mut r, "select id from orders");
        let mut cl = BytesMut::new();
        let more = [0xFE, 0, 0, 0x0A, 0]; // autocommit | more results
        let seq: Vec<&[u8]> = vec![
            &[1],
            b"\x03def",
            EOF,
            b"\x011",
            b"\x012",
            b"\x013",
            &more,
            &[0, 0, 0, 2, 0, 0, 0],
        ];
        let mut last = Upstream::More;
        for (i, p) in seq.iter().enumerate() {
            last = r.on_upstream(&pkt(i as u8 + 1, p), &mut cl);
        }
        assert_eq!(last, Upstream::Done);
        let p = packets(&cl);
        assert_eq!(p.last().unwrap().1[0], 0xFF);
        assert_eq!(p.len(), 6);
    }

    #[test]
    fn long_rows_are_relayed_intact() {
        let mut r = relay();
        query(&mut r, "select id from orders");
        let mut cl = BytesMut::new();
        for (i, p) in [&[1u8][..], b"\x03def", EOF].iter().enumerate() {
            r.on_upstream(&pkt(i as u8 + 1, p), &mut cl);
        }
        // A row of 16 MiB and 3 bytes: a full chunk, then its rest.
        let mut big = BytesMut::zeroed(frame::MAX_PAYLOAD);
        big[0] = 0xFC;
        let first = Packet {
            seq: 4,
            payload: big,
        };
        assert_eq!(r.on_upstream(&first, &mut cl), Upstream::More);
        assert_eq!(r.on_upstream(&pkt(5, b"abc"), &mut cl), Upstream::More);
        assert_eq!(r.on_upstream(&pkt(6, EOF), &mut cl), Upstream::Done);
        let p = packets(&cl);
        let sizes: Vec<usize> = p.iter().map(|x| x.1.len()).collect();
        assert_eq!(sizes, vec![1, 4, 5, frame::MAX_PAYLOAD, 3, 5]);
        let seqs: Vec<u8> = p.iter().map(|x| x.0).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn long_rows_continue_and_are_dropped_whole() {
        let mut r = relay();
        query(&mut r, "select id from orders");
        let mut cl = BytesMut::new();
        for (i, p) in [&[1u8][..], b"\x03def", EOF, b"\x011", b"\x012"]
            .iter()
            .enumerate()
        {
            r.on_upstream(&pkt(i as u8 + 1, p), &mut cl);
        }
        let before = packets(&cl).len();
        // A third row of 16 MiB and more: both chunks dropped, and the
        // continuation is not mistaken for an EOF.
        let mut big = BytesMut::zeroed(frame::MAX_PAYLOAD);
        big[0] = 0xFC;
        let first = Packet {
            seq: 6,
            payload: big,
        };
        assert_eq!(r.on_upstream(&first, &mut cl), Upstream::More);
        assert_eq!(r.on_upstream(&pkt(7, &[0xFE]), &mut cl), Upstream::More);
        assert_eq!(packets(&cl).len(), before);
        assert_eq!(r.on_upstream(&pkt(8, EOF), &mut cl), Upstream::Done);
        assert_eq!(packets(&cl).last().unwrap().1[0], 0xFF);
    }

    #[test]
    fn prepared_statements_are_remembered_and_capped_across_fetches() {
        let mut r = relay();
        let mut payload = vec![com::STMT_PREPARE];
        payload.extend_from_slice(b"select id from orders where id > ?");
        let (step, up, _) = r_on(&mut r, &payload);
        assert_eq!(step, Step::Forward);
        assert!(packets(&up)[0].1.ends_with(b"LIMIT 2"));
        let mut cl = BytesMut::new();
        // PREPARE_OK: id 7, 1 column, 1 param.
        let ok = [0, 7, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0];
        let answers: Vec<&[u8]> = vec![&ok, b"\x03def-param", EOF, b"\x03def-col", EOF];
        let mut last = Upstream::More;
        for (i, p) in answers.iter().enumerate() {
            last = r.on_upstream(&pkt(i as u8 + 1, p), &mut cl);
        }
        assert_eq!(last, Upstream::Done);
        assert_eq!(packets(&cl).len(), 5);
        // Execute with a cursor, then fetch in chunks: capped as a whole.
        let (step, _, _) = r_on(&mut r, &[com::STMT_EXECUTE, 7, 0, 0, 0, 1, 1, 0, 0, 0]);
        assert_eq!(step, Step::Forward);
        let mut cl = BytesMut::new();
        let cursor_eof = [0xFE, 0, 0, 0x42, 0];
        for (i, p) in [&[1u8][..], b"\x03def", &cursor_eof].iter().enumerate() {
            let v = r.on_upstream(&pkt(i as u8 + 1, p), &mut cl);
            assert_eq!(
                v,
                if i == 2 {
                    Upstream::Done
                } else {
                    Upstream::More
                }
            );
        }
        let fetch = [com::STMT_FETCH, 7, 0, 0, 0, 2, 0, 0, 0];
        assert_eq!(r_on(&mut r, &fetch).0, Step::Forward);
        let mut cl = BytesMut::new();
        r.on_upstream(&pkt(1, b"\x00\x00a"), &mut cl);
        r.on_upstream(&pkt(2, b"\x00\x00b"), &mut cl);
        assert_eq!(r.on_upstream(&pkt(3, EOF), &mut cl), Upstream::Done);
        assert_eq!(packets(&cl).len(), 3);
        assert_eq!(r_on(&mut r, &fetch).0, Step::Forward);
        let mut cl = BytesMut::new();
        r.on_upstream(&pkt(1, b"\x00\x00c"), &mut cl);
        assert_eq!(r.on_upstream(&pkt(2, EOF), &mut cl), Upstream::Done);
        let p = packets(&cl);
        assert_eq!(p.len(), 1);
        assert_eq!(frame::error_fields(&p[0].1).0, er::TOO_BIG_SELECT);
        // Closing forgets the statement.
        assert_eq!(
            r_on(&mut r, &[com::STMT_CLOSE, 7, 0, 0, 0]).0,
            Step::ForwardOnly
        );
        assert_eq!(
            r_on(&mut r, &[com::STMT_EXECUTE, 7, 0, 0, 0, 0, 1, 0, 0, 0]).0,
            Step::Answered
        );
    }

    #[test]
    fn refused_prepare_never_reaches_the_server() {
        let mut r = relay();
        let mut payload = vec![com::STMT_PREPARE];
        payload.extend_from_slice(b"delete from orders where id = ?");
        let (step, up, cl) = r_on(&mut r, &payload);
        assert!(up.is_empty());
        assert_eq!(
            (step, error_code(&cl)),
            (Step::Answered, er::READ_ONLY_TRANSACTION)
        );
    }

    #[test]
    fn use_switches_on_the_same_account_only() {
        let mut r = relay();
        let (step, up, _) = r_on(&mut r, b"\x02shop2");
        assert_eq!(step, Step::Forward);
        // The server is told the database's name there.
        assert_eq!(&packets(&up)[0].1, b"\x02shop2_real");
        let mut cl = BytesMut::new();
        assert_eq!(
            r.on_upstream(&pkt(1, &[0, 0, 0, 2, 0, 0, 0]), &mut cl),
            Upstream::Done
        );
        assert_eq!(r.database(), "shop2");
        // Now shop2's rules apply: shop's tables are another database.
        let (step, up, _) = query(&mut r, "select id from t");
        assert_eq!(step, Step::Forward);
        assert!(!up.is_empty());
        // A database on another server: connect to it directly.
        let (step, up, cl) = query(&mut r, "use far");
        assert!(up.is_empty());
        assert_eq!(
            (step, error_code(&cl)),
            (Step::Answered, er::DBACCESS_DENIED)
        );
        // Unknown databases.
        let (step, _, cl) = r_on(&mut r, b"\x02mysql");
        assert_eq!(
            (step, error_code(&cl)),
            (Step::Answered, er::DBACCESS_DENIED)
        );
        // A failed switch leaves the session where it was.
        let (_, _, _) = r_on(&mut r, b"\x02shop");
        let mut cl = BytesMut::new();
        r.on_upstream(&pkt(1, b"\xff\x15\x04#42000denied"), &mut cl);
        assert_eq!(r.database(), "shop2");
    }

    #[test]
    fn a_server_asking_for_a_local_file_closes_the_session() {
        let mut r = relay();
        query(&mut r, "select id from orders");
        let mut cl = BytesMut::new();
        assert_eq!(
            r.on_upstream(&pkt(1, b"\xfb/etc/passwd"), &mut cl),
            Upstream::Close
        );
        assert_eq!(packets(&cl)[0].1[0], 0xFF);
        // Garbage where a result header belongs.
        let mut r = relay();
        query(&mut r, "select id from orders");
        let mut cl = BytesMut::new();
        assert_eq!(r.on_upstream(&pkt(1, &[0xFC, 1]), &mut cl), Upstream::Close);
        // Unprompted packets.
        let mut r = relay();
        assert_eq!(
            r.on_upstream(&pkt(1, &[0]), &mut BytesMut::new()),
            Upstream::Close
        );
    }

    #[test]
    fn reset_connection_asks_for_pinning_again() {
        let mut r = relay();
        assert_eq!(r_on(&mut r, &[com::RESET_CONNECTION]).0, Step::Forward);
        let mut cl = BytesMut::new();
        assert_eq!(
            r.on_upstream(&pkt(1, &[0, 0, 0, 2, 0, 0, 0]), &mut cl),
            Upstream::DoneReset
        );
        assert_eq!(r_on(&mut r, &[com::PING]).0, Step::Forward);
        assert_eq!(
            r.on_upstream(&pkt(1, &[0, 0, 0, 2, 0, 0, 0]), &mut cl),
            Upstream::Done
        );
    }
}
