//! `SWITCHBOARD_LOG`: which records are written, per module, in
//! `env_logger`'s filter syntax.
//!
//! A comma-separated list of directives, each `LEVEL` or `MODULE=LEVEL`
//! (`info`; `warn,switchboard_storage=debug`;
//! `switchboard_engine::runtime=trace`). A bare `LEVEL` sets the default
//! level. Where this differs from `env_logger`:
//! - With no bare `LEVEL` the default is `info`, not `off`:
//!   `switchboard_storage=debug` adds storage's debug records to the
//!   usual `info` log instead of silencing everything else (errors
//!   included). Write `off,switchboard_storage=debug` for `env_logger`'s
//!   meaning.
//! - A bare `MODULE` is refused (write `MODULE=trace`): a misspelt level
//!   must not pass as a module name and leave the level unchanged.
//! - A module with a `-` is refused: targets are module paths, which
//!   have `_` (`switchboard_engine`, not the package's
//!   `switchboard-engine`), so it would match nothing.
//!
//! A record's target (its module path,
//! `switchboard_engine::runtime`) takes the level of the longest directive
//! module it starts with (a plain prefix, as in `env_logger`); a target
//! no directive names takes the default, except that a dependency's
//! (rustls, glommio, mysql...: a target not starting with `switchboard`)
//! is capped at `warn`, so `SWITCHBOARD_LOG=trace` does not dump a TLS
//! library's handshake. Naming a dependency lifts its cap:
//! `info,rustls=debug`. `env_logger`'s `/regex` suffix is refused, not
//! ignored.

use log::{Level, LevelFilter};

/// The most verbose level a dependency's records are written at, unless
/// a directive names it.
const DEPENDENCY_LEVEL_MAX: LevelFilter = LevelFilter::Warn;

/// One `MODULE=LEVEL` directive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Directive {
    /// The target prefix it applies to.
    module: String,
    /// The most verbose level written for those targets.
    level: LevelFilter,
}

/// A parsed `SWITCHBOARD_LOG`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// The level of targets no directive names (ours; dependencies are
    /// capped at `DEPENDENCY_LEVEL_MAX`).
    default: LevelFilter,
    /// Module directives, longest module first (so the first match is the
    /// longest), at most one per module (the last given wins).
    directives: Vec<Directive>,
}

impl Default for Filter {
    /// `info`.
    fn default() -> Filter {
        Filter::level(LevelFilter::Info)
    }
}

impl Filter {
    /// Every target at `level` (dependencies capped at `warn`).
    pub fn level(level: LevelFilter) -> Filter {
        Filter {
            default: level,
            directives: Vec::new(),
        }
    }

    /// Parses a filter (see the module doc). The error says what is wrong
    /// and shows the syntax.
    pub fn parse(spec: &str) -> Result<Filter, String> {
        let mut filter = Filter::level(LevelFilter::Info);
        let mut defaults = 0;
        if spec.contains('/') {
            return Err(format!(
                "{spec:?}: a /regex filter is not supported (use LEVEL or MODULE=LEVEL, comma-separated)"
            ));
        }
        for part in spec.split(',').map(str::trim) {
            if part.is_empty() {
                continue;
            }
            let (module, level) = match part.split_once('=') {
                Some((module, level)) => {
                    let module = module.trim();
                    let level = level.trim();
                    if module.is_empty() {
                        return Err(format!("{part:?} names no module (MODULE=LEVEL)"));
                    }
                    let level = parse_level(level).ok_or_else(|| {
                        format!("{part:?}: {level:?} is not a level (off, error, warn, info, debug, trace)")
                    })?;
                    (Some(module), level)
                }
                None => match parse_level(part) {
                    Some(level) => (None, level),
                    None => {
                        return Err(format!(
                            "{part:?} is not a level (off, error, warn, info, debug, trace); \
                             a module needs one: {part}=debug"
                        ))
                    }
                },
            };
            match module {
                None => {
                    defaults += 1;
                    filter.default = level;
                }
                Some(module) => {
                    check_module(module)?;
                    filter.directives.retain(|d| d.module != module);
                    filter.directives.push(Directive {
                        module: module.to_string(),
                        level,
                    });
                }
            }
        }
        if defaults > 1 {
            return Err(format!("{spec:?} gives more than one default level"));
        }
        if defaults == 0 && filter.directives.is_empty() {
            return Err(format!(
                "{spec:?} is empty (e.g. info, or warn,switchboard_storage=debug)"
            ));
        }
        // Longest first; equal lengths are distinct modules, so the order
        // among them does not matter (but is fixed, for `PartialEq`).
        filter.directives.sort_by(|a, b| {
            b.module
                .len()
                .cmp(&a.module.len())
                .then(a.module.cmp(&b.module))
        });
        Ok(filter)
    }

    /// The most verbose level written for `target`.
    pub fn level_of(&self, target: &str) -> LevelFilter {
        if let Some(d) = self
            .directives
            .iter()
            .find(|d| target.starts_with(d.module.as_str()))
        {
            return d.level;
        }
        if is_ours(target) {
            self.default
        } else {
            self.default.min(DEPENDENCY_LEVEL_MAX)
        }
    }

    /// Whether a record at `level` from `target` is written.
    pub fn enabled(&self, target: &str, level: Level) -> bool {
        level <= self.level_of(target)
    }

    /// The most verbose level any target is written at (for
    /// `log::set_max_level`, which lets the macros skip the rest without
    /// calling the logger).
    pub fn max_level(&self) -> LevelFilter {
        self.directives
            .iter()
            .map(|d| d.level)
            .fold(self.default, |a, b| a.max(b))
    }
}

/// Whether `target` is one of Switchboard's crates (`switchboard` itself,
/// `switchboard_engine`, `switchboard_io::conn`, ...).
fn is_ours(target: &str) -> bool {
    target.starts_with("switchboard")
}

fn parse_level(s: &str) -> Option<LevelFilter> {
    Some(match s.to_ascii_lowercase().as_str() {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

/// A module path: identifiers joined by `::`. A `-` is refused with a
/// hint: a crate's name may have one (`switchboard-engine`), its module
/// path never does (`switchboard_engine`), so the directive would match
/// nothing, silently.
fn check_module(module: &str) -> Result<(), String> {
    if module.contains('-') {
        return Err(format!(
            "{module:?}: a module path has no `-` (a record's target is its module path: \
             write {:?}, with `_`)",
            module.replace('-', "_")
        ));
    }
    let ok = module.split("::").all(|part| {
        !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{module:?} is neither a level (off, error, warn, info, debug, trace) nor a module \
             path like switchboard_storage or switchboard_engine::runtime"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::LevelFilter::{Debug, Error, Info, Off, Trace, Warn};

    /// Parses `spec` and checks the level each `(target, level)` gets.
    fn check(spec: &str, expected: &[(&str, LevelFilter)]) {
        let filter = Filter::parse(spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        for &(target, level) in expected {
            assert_eq!(filter.level_of(target), level, "{spec:?} for {target}");
        }
    }

    #[test]
    fn a_bare_level_is_the_default_and_dependencies_are_capped_at_warn() {
        let table: &[(&str, &[(&str, LevelFilter)])] = &[
            (
                "info",
                &[
                    ("switchboard", Info),
                    ("switchboard_engine::server", Info),
                    ("rustls::server::hs", Warn),
                ],
            ),
            (
                "trace",
                &[
                    ("switchboard_io::tls", Trace),
                    ("glommio::reactor", Warn),
                    ("mysql", Warn),
                ],
            ),
            (
                "error",
                &[("switchboard_storage", Error), ("rustls", Error)],
            ),
            ("off", &[("switchboard_engine", Off), ("rustls", Off)]),
            ("DEBUG", &[("switchboard_engine", Debug)]),
        ];
        for (spec, expected) in table {
            check(spec, expected);
        }
    }

    #[test]
    fn the_longest_matching_module_wins() {
        check(
            "warn,switchboard_storage=debug",
            &[
                ("switchboard_storage", Debug),
                ("switchboard_storage::mysql::conn", Debug),
                ("switchboard_engine::runtime", Warn),
                ("rustls", Warn),
            ],
        );
        check(
            "switchboard_engine::runtime=trace",
            &[
                ("switchboard_engine::runtime", Trace),
                ("switchboard_engine::server", Info),
                ("switchboard_storage", Info),
            ],
        );
        // `env_logger`'s meaning of a lone directive (nothing else).
        check(
            "off,switchboard_storage=debug",
            &[
                ("switchboard_storage::batch", Debug),
                ("switchboard_engine", Off),
            ],
        );
        check(
            "info, switchboard_engine=warn , switchboard_engine::runtime=debug",
            &[
                ("switchboard_engine::runtime", Debug),
                ("switchboard_engine::handler", Warn),
                ("switchboard_io", Info),
            ],
        );
        // Given in either order.
        check(
            "switchboard_engine::runtime=debug,switchboard_engine=warn",
            &[
                ("switchboard_engine::runtime", Debug),
                ("switchboard_engine", Warn),
            ],
        );
        // The last directive for a module wins.
        check(
            "error,switchboard_io=trace,switchboard_storage=info,switchboard_storage=debug",
            &[
                ("switchboard_io::conn", Trace),
                ("switchboard_storage", Debug),
                ("switchboard", Error),
            ],
        );
    }

    #[test]
    fn naming_a_dependency_lifts_its_cap() {
        check(
            "info,rustls=debug",
            &[
                ("rustls::server", Debug),
                ("glommio", Warn),
                ("switchboard_io", Info),
            ],
        );
        check(
            "trace,glommio=off",
            &[("glommio::executor", Off), ("mysql", Warn)],
        );
    }

    #[test]
    fn max_level_is_the_most_verbose_directive() {
        let max = |spec: &str| Filter::parse(spec).unwrap().max_level();
        assert_eq!(max("info"), Info);
        assert_eq!(max("warn,switchboard_storage=debug"), Debug);
        assert_eq!(max("switchboard_engine::runtime=trace"), Trace);
        assert_eq!(max("trace,switchboard_io=off"), Trace);
        assert_eq!(max("off"), Off);
    }

    #[test]
    fn malformed_filters_are_refused_with_the_reason() {
        let table = [
            ("", "empty"),
            (" , ", "empty"),
            ("loud", "not a level"),
            ("debgu", "debgu=debug"),
            ("warn,switchboard_io", "not a level"),
            ("info,debug", "more than one default"),
            ("=debug", "names no module"),
            ("switchboard_engine=loud", "not a level"),
            ("switchboard_engine=", "not a level"),
            ("switchboard engine=debug", "neither a level"),
            ("switchboard_engine:::runtime=debug", "neither a level"),
            (
                "switchboard-engine=debug",
                "write \"switchboard_engine\", with `_`",
            ),
            ("info,switchboard_io::tls-x=trace", "has no `-`"),
            ("info/foo", "regex"),
        ];
        for (spec, why) in table {
            let e = Filter::parse(spec).expect_err(spec);
            assert!(e.contains(why), "{spec:?}: {e}");
        }
    }

    #[test]
    fn enabled_compares_the_record_level() {
        let f = Filter::parse("warn,switchboard_storage=debug").unwrap();
        assert!(f.enabled("switchboard_storage::batch", Level::Debug));
        assert!(!f.enabled("switchboard_storage::batch", Level::Trace));
        assert!(f.enabled("switchboard_engine", Level::Warn));
        assert!(!f.enabled("switchboard_engine", Level::Info));
        assert!(!f.enabled("rustls", Level::Info));
    }
}
