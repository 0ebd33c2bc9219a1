//! Statistics and markdown output.

use hdrhistogram::Histogram;

pub fn new_hist() -> Histogram<u64> {
    // nanoseconds, 1 ns .. 100 s, 3 significant digits
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

/// Percentile of a histogram of nanoseconds, in milliseconds.
pub fn pct_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.value_at_quantile(q) as f64 / 1e6
}

pub fn max_ms(h: &Histogram<u64>) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.max() as f64 / 1e6
}

pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn max_of(values: &[f64]) -> f64 {
    values
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(f64::NAN, f64::max)
}

/// `45 123/s`
pub fn rate(x: f64) -> String {
    if x.is_nan() {
        return "n/a".into();
    }
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    format!("{out}/s")
}

/// `**45 123/s** (runs: 44980, 45123, 46001)`: the median in bold, then every run.
pub fn rate_of_runs(rates: &[f64]) -> String {
    let runs: Vec<String> = rates.iter().map(|x| format!("{x:.0}")).collect();
    format!("**{}** (runs: {})", rate(median(rates)), runs.join(", "))
}

/// `0.210 ms / 1.02 ms`: medians of p50s and p99s.
pub fn p50_p99(p50s: &[f64], p99s: &[f64]) -> String {
    format!("{} / {}", ms(median(p50s)), ms(median(p99s)))
}

/// Milliseconds with a precision that suits the magnitude.
pub fn ms(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else if x < 1.0 {
        format!("{x:.3} ms")
    } else if x < 100.0 {
        format!("{x:.2} ms")
    } else {
        format!("{x:.0} ms")
    }
}

pub fn ratio(x: f64) -> String {
    if x.is_nan() || x.is_infinite() {
        "n/a".into()
    } else {
        format!("{x:.2}x")
    }
}

pub fn pct(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else {
        format!("{:.0}%", x * 100.0)
    }
}

pub fn verdict(pass: bool) -> &'static str {
    if pass { "**PASS**" } else { "**FAIL**" }
}

pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("| {} |\n", self.headers.join(" | ")));
        s.push_str(&format!("|{}\n", "---|".repeat(self.headers.len())));
        for r in &self.rows {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        s
    }
}

/// One target of the issue and whether it was met.
pub struct Target {
    pub name: String,
    pub measured: String,
    pub pass: bool,
}

#[derive(Default)]
pub struct Report {
    pub sections: Vec<String>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
}

impl Report {
    /// Adds a section and prints it at once (results appear as each scenario ends).
    pub fn section(&mut self, text: String) {
        println!("{text}");
        self.sections.push(text);
    }

    pub fn target(&mut self, name: &str, measured: String, pass: bool) {
        self.targets.push(Target {
            name: name.to_owned(),
            measured,
            pass,
        });
    }

    pub fn note(&mut self, text: String) {
        eprintln!("note: {text}");
        self.notes.push(text);
    }

    pub fn summary(&self) -> String {
        let mut t = Table::new(&["target", "measured", "result"]);
        for target in &self.targets {
            t.row(vec![
                target.name.clone(),
                target.measured.clone(),
                verdict(target.pass).into(),
            ]);
        }
        let mut s = format!("## Targets\n\n{}", t.render());
        if !self.notes.is_empty() {
            s.push_str("\n### Observations\n\n");
            for n in &self.notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s
    }
}
