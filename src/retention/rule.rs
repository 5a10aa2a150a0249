//! One retention rule: the subset of CEL that upstream Angos's retention
//! documents use (doc/how-to/configure-retention-policies.md and
//! doc/reference/cel-expressions.md), parsed once at configuration load and
//! evaluated per image. Anything outside the subset is a parse error with a
//! 1-based character position, so a typo fails the load instead of
//! silently keeping or deleting images.
//!
//! The subset: `||`, `&&`, `!`, parentheses, `== != < > <= >=`, `in [list]`,
//! `+ -` on integers (and `+` on strings), integer, string (single or double
//! quotes; escapes `\\ \" \' \n \r \t`), `true`, `false` and `null` literals,
//! `image.tag`, `image.pushed_at`, `image.last_pulled_at`, `now()`,
//! `days(n)`, `hours(n)`, `minutes(n)`, `top_pushed(n)`, `top_pulled(n)` and
//! the string methods `matches`, `startsWith`, `endsWith`, `contains`.
//!
//! Types are checked when a rule is evaluated, as a CEL interpreter does:
//! `image.tag > 5` parses, and evaluating it is an error. Upstream keeps a
//! manifest whose rule fails to evaluate (fail-open); that is the caller's
//! decision, this module only reports the error.

use std::borrow::Cow;
use std::fmt;

use crate::pattern::Pattern;

/// A parsed rule; it keeps its source for messages and comparisons.
#[derive(Clone)]
pub struct Rule {
    source: String,
    root: Node,
    uses_pull_time: bool,
}

/// Why a rule does not parse: where (1-based, in characters) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub position: usize,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.position, self.message)
    }
}

impl std::error::Error for RuleError {}

/// What a rule sees of one manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Image<'a> {
    /// `image.tag`: `None` (CEL `null`) for an untagged manifest.
    pub tag: Option<&'a str>,
    /// `image.pushed_at`, seconds since the epoch.
    pub pushed_at: i64,
    /// `image.last_pulled_at`, seconds since the epoch; 0 when never pulled.
    pub last_pulled_at: i64,
    /// The 1-based rank of this image's tag among the namespace's tags by
    /// push time, newest first; `None` for an untagged image.
    pub pushed_rank: Option<usize>,
    /// The same by last pull time, most recent first; `None` for an
    /// untagged image and for a tag never pulled.
    pub pulled_rank: Option<usize>,
}

/// Nesting deeper than this is refused at parse time: evaluation recurses,
/// and a rule nested thousands deep would overflow the stack.
const NESTING_MAX: usize = 64;

const SECONDS_PER_DAY: i64 = 86_400;
const SECONDS_PER_HOUR: i64 = 3_600;
const SECONDS_PER_MINUTE: i64 = 60;

impl Rule {
    pub fn parse(source: &str) -> Result<Rule, RuleError> {
        let tokens = lex(source)?;
        let mut parser = Parser {
            tokens,
            next: 0,
            depth: 0,
        };
        let root = parser.expression()?;
        let end = parser.peek();
        if end.token != Token::End {
            return Err(RuleError {
                position: end.position,
                message: format!("unexpected {} after the end of the rule", end.token.describe()),
            });
        }
        let uses_pull_time = root.uses_pull_time();
        Ok(Rule {
            source: source.to_string(),
            root,
            uses_pull_time,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the rule reads pull times (`image.last_pulled_at`,
    /// `top_pulled`), which are only recorded with `update_pull_time = true`.
    pub fn uses_pull_time(&self) -> bool {
        self.uses_pull_time
    }

    /// Whether the rule keeps `image` at `now_secs` (seconds since the
    /// epoch). A result that is not a bool is an error, as is any type
    /// mismatch on the way; the message carries the position.
    pub fn keeps(&self, image: &Image, now_secs: i64) -> Result<bool, String> {
        let context = Context {
            tag: image.tag,
            pushed_at: image.pushed_at,
            last_pulled_at: image.last_pulled_at,
            pushed_rank: image.pushed_rank,
            pulled_rank: image.pulled_rank,
            now: now_secs,
        };
        match self.root.eval(&context).map_err(|error| error.to_string())? {
            Value::Bool(keep) => Ok(keep),
            other => Err(format!(
                "the rule gives {} {}, not a bool",
                article(other.type_name()),
                other.type_name()
            )),
        }
    }
}

impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rule({:?})", self.source)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn article(type_name: &str) -> &'static str {
    if type_name == "int" { "an" } else { "a" }
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Int(i64),
    Str(String),
    Name(String),
    Punct(&'static str),
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Int(value) => format!("number {value}"),
            Token::Str(_) => "string".to_string(),
            Token::Name(name) => format!("'{name}'"),
            Token::Punct(punct) => format!("'{punct}'"),
            Token::End => "end of rule".to_string(),
        }
    }
}

#[derive(Debug, Clone)]
struct Lexed {
    token: Token,
    /// 1-based character position of the token's first character.
    position: usize,
}

/// Two-character operators first, so `<=` is not read as `<` then `=`.
const PUNCTUATION: [&str; 17] = [
    "&&", "||", "==", "!=", "<=", ">=", "(", ")", "[", "]", ",", ".", "!", "<", ">", "+", "-",
];

fn lex(source: &str) -> Result<Vec<Lexed>, RuleError> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut index = 0;
    let error = |index: usize, message: String| RuleError {
        position: index + 1,
        message,
    };
    while index < chars.len() {
        let c = chars[index];
        let start = index;
        if c.is_whitespace() {
            index += 1;
            continue;
        }
        let token = if c.is_ascii_digit() {
            while index < chars.len() && chars[index].is_ascii_digit() {
                index += 1;
            }
            match chars.get(index) {
                Some('.') if chars.get(index + 1).is_some_and(char::is_ascii_digit) => {
                    return Err(error(start, "floating-point numbers are not supported".into()));
                }
                Some(next) if next.is_alphanumeric() || *next == '_' => {
                    return Err(error(index, format!("unexpected '{next}' after a number")));
                }
                _ => {}
            }
            let digits: String = chars[start..index].iter().collect();
            let value = digits
                .parse::<i64>()
                .map_err(|_| error(start, format!("integer {digits} is out of range")))?;
            Token::Int(value)
        } else if c == '"' || c == '\'' {
            let (text, end) = lex_string(&chars, start)?;
            index = end;
            Token::Str(text)
        } else if c.is_ascii_alphabetic() || c == '_' {
            while index < chars.len() && (chars[index].is_ascii_alphanumeric() || chars[index] == '_') {
                index += 1;
            }
            Token::Name(chars[start..index].iter().collect())
        } else {
            let rest = &chars[index..];
            let Some(punct) = PUNCTUATION
                .iter()
                .find(|punct| punct.chars().enumerate().all(|(at, c)| rest.get(at) == Some(&c)))
            else {
                let hint = match c {
                    '&' => " (did you mean '&&'?)",
                    '|' => " (did you mean '||'?)",
                    '=' => " (did you mean '=='?)",
                    _ => "",
                };
                return Err(error(start, format!("unexpected character '{c}'{hint}")));
            };
            index += punct.len();
            Token::Punct(punct)
        };
        tokens.push(Lexed {
            token,
            position: start + 1,
        });
    }
    tokens.push(Lexed {
        token: Token::End,
        position: chars.len() + 1,
    });
    Ok(tokens)
}

/// A quoted string starting at `start`; its text and the index after it.
fn lex_string(chars: &[char], start: usize) -> Result<(String, usize), RuleError> {
    let quote = chars[start];
    let mut text = String::new();
    let mut index = start + 1;
    loop {
        match chars.get(index) {
            // CEL's quoted strings are one line; a newline means the quote was never closed.
            None | Some('\n') => {
                return Err(RuleError {
                    position: start + 1,
                    message: "unterminated string".into(),
                });
            }
            Some(c) if *c == quote => return Ok((text, index + 1)),
            Some('\\') => {
                let escaped = match chars.get(index + 1) {
                    Some('\\') => '\\',
                    Some('"') => '"',
                    Some('\'') => '\'',
                    Some('n') => '\n',
                    Some('r') => '\r',
                    Some('t') => '\t',
                    Some(other) => {
                        return Err(RuleError {
                            position: index + 1,
                            message: format!(
                                "unknown escape '\\{other}' (known: \\\\ \\\" \\' \\n \\r \\t; \
                                 a regex's backslash is written \\\\)"
                            ),
                        });
                    }
                    None => {
                        return Err(RuleError {
                            position: start + 1,
                            message: "unterminated string".into(),
                        });
                    }
                };
                text.push(escaped);
                index += 2;
            }
            Some(c) => {
                text.push(*c);
                index += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The tree
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Node {
    /// Where the node's operator, name or literal starts (for eval errors).
    position: usize,
    expr: Expr,
}

#[derive(Debug, Clone)]
enum Expr {
    Int(i64),
    Str(String),
    Bool(bool),
    Null,
    Field(Field),
    List(Vec<Node>),
    Not(Box<Node>),
    Negate(Box<Node>),
    Binary(Operator, Box<Node>, Box<Node>),
    Call(Function, Option<Box<Node>>),
    Method {
        method: StringMethod,
        receiver: Box<Node>,
        argument: Box<Node>,
        /// `matches` with a literal argument: compiled once, at parse time.
        regex: Option<Pattern>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Tag,
    PushedAt,
    LastPulledAt,
}

const FIELDS: [(&str, Field); 3] = [
    ("tag", Field::Tag),
    ("pushed_at", Field::PushedAt),
    ("last_pulled_at", Field::LastPulledAt),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Or,
    And,
    Equal,
    NotEqual,
    Less,
    Greater,
    LessEqual,
    GreaterEqual,
    In,
    Add,
    Subtract,
}

impl Operator {
    fn symbol(self) -> &'static str {
        match self {
            Operator::Or => "||",
            Operator::And => "&&",
            Operator::Equal => "==",
            Operator::NotEqual => "!=",
            Operator::Less => "<",
            Operator::Greater => ">",
            Operator::LessEqual => "<=",
            Operator::GreaterEqual => ">=",
            Operator::In => "in",
            Operator::Add => "+",
            Operator::Subtract => "-",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    Now,
    Days,
    Hours,
    Minutes,
    TopPushed,
    TopPulled,
}

/// Each function with its name and whether it takes its one argument.
const FUNCTIONS: [(&str, Function, bool); 6] = [
    ("now", Function::Now, false),
    ("days", Function::Days, true),
    ("hours", Function::Hours, true),
    ("minutes", Function::Minutes, true),
    ("top_pushed", Function::TopPushed, true),
    ("top_pulled", Function::TopPulled, true),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StringMethod {
    Matches,
    StartsWith,
    EndsWith,
    Contains,
}

const METHODS: [(&str, StringMethod); 4] = [
    ("matches", StringMethod::Matches),
    ("startsWith", StringMethod::StartsWith),
    ("endsWith", StringMethod::EndsWith),
    ("contains", StringMethod::Contains),
];

fn names<T>(table: &[(&'static str, T)]) -> String {
    table.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
}

impl Node {
    fn uses_pull_time(&self) -> bool {
        match &self.expr {
            Expr::Field(Field::LastPulledAt) | Expr::Call(Function::TopPulled, _) => true,
            Expr::Int(_) | Expr::Str(_) | Expr::Bool(_) | Expr::Null | Expr::Field(_) => false,
            Expr::List(items) => items.iter().any(Node::uses_pull_time),
            Expr::Not(inner) | Expr::Negate(inner) => inner.uses_pull_time(),
            Expr::Binary(_, left, right) => left.uses_pull_time() || right.uses_pull_time(),
            Expr::Call(_, argument) => argument.as_ref().is_some_and(|node| node.uses_pull_time()),
            Expr::Method {
                receiver, argument, ..
            } => receiver.uses_pull_time() || argument.uses_pull_time(),
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing: CEL's precedence, loosest first: ||, &&, relations (== != < > <=
// >= in), + -, unary ! -, member calls.
// ---------------------------------------------------------------------------

struct Parser {
    tokens: Vec<Lexed>,
    next: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Lexed {
        &self.tokens[self.next]
    }

    fn advance(&mut self) -> Lexed {
        let lexed = self.tokens[self.next].clone();
        if lexed.token != Token::End {
            self.next += 1;
        }
        lexed
    }

    fn at(&self, punct: &str) -> bool {
        matches!(self.peek().token, Token::Punct(next) if next == punct)
    }

    fn expect(&mut self, punct: &'static str, context: &str) -> Result<Lexed, RuleError> {
        if self.at(punct) {
            return Ok(self.advance());
        }
        let found = self.peek();
        Err(RuleError {
            position: found.position,
            message: format!("expected '{punct}' {context}, found {}", found.token.describe()),
        })
    }

    fn expression(&mut self) -> Result<Node, RuleError> {
        self.binary_level(0)
    }

    /// One level of left-associative binary operators; level 3 is unary.
    fn binary_level(&mut self, level: usize) -> Result<Node, RuleError> {
        const LEVELS: [&[(&str, Operator)]; 4] = [
            &[("||", Operator::Or)],
            &[("&&", Operator::And)],
            &[
                ("==", Operator::Equal),
                ("!=", Operator::NotEqual),
                ("<=", Operator::LessEqual),
                (">=", Operator::GreaterEqual),
                ("<", Operator::Less),
                (">", Operator::Greater),
            ],
            &[("+", Operator::Add), ("-", Operator::Subtract)],
        ];
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut left = self.binary_level(level + 1)?;
        loop {
            let next = self.peek();
            let operator = match &next.token {
                Token::Punct(punct) => LEVELS[level]
                    .iter()
                    .find(|(symbol, _)| symbol == punct)
                    .map(|(_, operator)| *operator),
                // `in` is a relation, with == and <.
                Token::Name(name) if level == 2 && name == "in" => Some(Operator::In),
                _ => None,
            };
            let Some(operator) = operator else {
                return Ok(left);
            };
            let position = self.advance().position;
            let right = self.binary_level(level + 1)?;
            left = Node {
                position,
                expr: Expr::Binary(operator, Box::new(left), Box::new(right)),
            };
        }
    }

    fn unary(&mut self) -> Result<Node, RuleError> {
        self.depth += 1;
        if self.depth > NESTING_MAX {
            return Err(RuleError {
                position: self.peek().position,
                message: format!("nested deeper than {NESTING_MAX} levels"),
            });
        }
        let node = if self.at("!") || self.at("-") {
            let lexed = self.advance();
            let inner = Box::new(self.unary()?);
            let expr = if lexed.token == Token::Punct("!") {
                Expr::Not(inner)
            } else {
                Expr::Negate(inner)
            };
            Node {
                position: lexed.position,
                expr,
            }
        } else {
            let primary = self.primary()?;
            self.members(primary)?
        };
        self.depth -= 1;
        Ok(node)
    }

    /// `.method(argument)` calls after a value.
    fn members(&mut self, mut receiver: Node) -> Result<Node, RuleError> {
        while self.at(".") {
            self.advance();
            let lexed = self.advance();
            let Token::Name(name) = &lexed.token else {
                return Err(RuleError {
                    position: lexed.position,
                    message: format!(
                        "expected a method name after '.', found {}",
                        lexed.token.describe()
                    ),
                });
            };
            let Some((_, method)) = METHODS.iter().find(|(known, _)| known == name) else {
                let what = if self.at("(") { "method" } else { "field" };
                return Err(RuleError {
                    position: lexed.position,
                    message: format!("unknown {what} '{name}' (string methods: {})", names(&METHODS)),
                });
            };
            self.expect("(", &format!("after '{name}'"))?;
            let argument = self.expression()?;
            if self.at(",") {
                return Err(RuleError {
                    position: self.peek().position,
                    message: format!("'{name}' takes one argument"),
                });
            }
            self.expect(")", &format!("to close '{name}('"))?;
            let regex = match (&method, &argument.expr) {
                (StringMethod::Matches, Expr::Str(source)) => {
                    Some(Pattern::new(source).map_err(|message| RuleError {
                        position: argument.position,
                        message,
                    })?)
                }
                _ => None,
            };
            receiver = Node {
                position: lexed.position,
                expr: Expr::Method {
                    method: *method,
                    receiver: Box::new(receiver),
                    argument: Box::new(argument),
                    regex,
                },
            };
        }
        Ok(receiver)
    }

    fn primary(&mut self) -> Result<Node, RuleError> {
        let lexed = self.advance();
        let position = lexed.position;
        let expr = match lexed.token {
            Token::Int(value) => Expr::Int(value),
            Token::Str(text) => Expr::Str(text),
            Token::Punct("(") => {
                let inner = self.expression()?;
                self.expect(")", "to close '('")?;
                return Ok(inner);
            }
            Token::Punct("[") => Expr::List(self.list()?),
            Token::Name(name) => match name.as_str() {
                "true" => Expr::Bool(true),
                "false" => Expr::Bool(false),
                "null" => Expr::Null,
                "image" => Expr::Field(self.field()?),
                _ if self.at("(") => return self.call(&name, position),
                _ => {
                    return Err(RuleError {
                        position,
                        message: format!(
                            "unknown identifier '{name}' (known: image.tag, image.pushed_at, \
                             image.last_pulled_at, true, false, null)"
                        ),
                    });
                }
            },
            token => {
                return Err(RuleError {
                    position,
                    message: format!("expected a value, found {}", token.describe()),
                });
            }
        };
        Ok(Node { position, expr })
    }

    /// `.tag`, `.pushed_at` or `.last_pulled_at` after `image`.
    fn field(&mut self) -> Result<Field, RuleError> {
        let known = format!("image.{}", FIELDS.map(|(name, _)| name).join(", image."));
        if !self.at(".") {
            return Err(RuleError {
                position: self.peek().position,
                message: format!("'image' is not a value by itself; use one of {known}"),
            });
        }
        self.advance();
        let lexed = self.advance();
        match &lexed.token {
            Token::Name(name) => FIELDS
                .iter()
                .find(|(field, _)| field == name)
                .map(|(_, field)| *field)
                .ok_or_else(|| RuleError {
                    position: lexed.position,
                    message: format!("unknown field 'image.{name}' (known: {known})"),
                }),
            token => Err(RuleError {
                position: lexed.position,
                message: format!("expected a field name after 'image.', found {}", token.describe()),
            }),
        }
    }

    /// A function call; the name was read and `(` is next.
    fn call(&mut self, name: &str, position: usize) -> Result<Node, RuleError> {
        let Some((_, function, takes_argument)) = FUNCTIONS.iter().find(|(known, ..)| *known == name) else {
            let known: Vec<&str> = FUNCTIONS.iter().map(|(name, ..)| *name).collect();
            return Err(RuleError {
                position,
                message: format!("unknown function '{name}' (known: {})", known.join(", ")),
            });
        };
        self.advance();
        let argument = if *takes_argument && !self.at(")") {
            Some(Box::new(self.expression()?))
        } else {
            None
        };
        let arity = |given: &str| RuleError {
            position,
            message: format!(
                "{name}() takes {}, {given}",
                if *takes_argument {
                    "one argument"
                } else {
                    "no argument"
                }
            ),
        };
        if self.at(",") || (argument.is_none() && *takes_argument) {
            return Err(arity(if self.at(",") { "more given" } else { "none given" }));
        }
        if !*takes_argument && !self.at(")") {
            return Err(arity("one given"));
        }
        self.expect(")", &format!("to close '{name}('"))?;
        Ok(Node {
            position,
            expr: Expr::Call(*function, argument),
        })
    }

    /// The items of a list; `[` was read. A trailing comma is allowed, as in CEL.
    fn list(&mut self) -> Result<Vec<Node>, RuleError> {
        let mut items = Vec::new();
        while !self.at("]") {
            items.push(self.expression()?);
            if !self.at(",") {
                break;
            }
            self.advance();
        }
        self.expect("]", "to close the list")?;
        Ok(items)
    }
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

struct Context<'a> {
    tag: Option<&'a str>,
    pushed_at: i64,
    last_pulled_at: i64,
    pushed_rank: Option<usize>,
    pulled_rank: Option<usize>,
    now: i64,
}

#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Int(i64),
    Str(Cow<'a, str>),
    Bool(bool),
    Null,
    List(Vec<Value<'a>>),
}

impl Value<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Str(_) => "string",
            Value::Bool(_) => "bool",
            Value::Null => "null",
            Value::List(_) => "list",
        }
    }
}

struct EvalError {
    position: usize,
    message: String,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.position, self.message)
    }
}

impl Node {
    fn error(&self, message: String) -> EvalError {
        EvalError {
            position: self.position,
            message,
        }
    }

    fn eval<'a>(&'a self, context: &Context<'a>) -> Result<Value<'a>, EvalError> {
        match &self.expr {
            Expr::Int(value) => Ok(Value::Int(*value)),
            Expr::Str(text) => Ok(Value::Str(Cow::Borrowed(text))),
            Expr::Bool(value) => Ok(Value::Bool(*value)),
            Expr::Null => Ok(Value::Null),
            Expr::Field(Field::Tag) => Ok(context
                .tag
                .map_or(Value::Null, |tag| Value::Str(Cow::Borrowed(tag)))),
            Expr::Field(Field::PushedAt) => Ok(Value::Int(context.pushed_at)),
            Expr::Field(Field::LastPulledAt) => Ok(Value::Int(context.last_pulled_at)),
            Expr::List(items) => items
                .iter()
                .map(|item| item.eval(context))
                .collect::<Result<_, _>>()
                .map(Value::List),
            Expr::Not(inner) => match inner.eval(context)? {
                Value::Bool(value) => Ok(Value::Bool(!value)),
                other => Err(self.error(format!("'!' needs a bool, got {}", other.type_name()))),
            },
            Expr::Negate(inner) => match inner.eval(context)? {
                Value::Int(value) => value
                    .checked_neg()
                    .map(Value::Int)
                    .ok_or_else(|| self.error("integer overflow".into())),
                other => Err(self.error(format!("'-' needs an int, got {}", other.type_name()))),
            },
            Expr::Binary(operator, left, right) => self.binary(*operator, left, right, context),
            Expr::Call(function, argument) => self.call(*function, argument.as_deref(), context),
            Expr::Method {
                method,
                receiver,
                argument,
                regex,
            } => self.method(*method, receiver, argument, regex.as_ref(), context),
        }
    }

    fn binary<'a>(
        &'a self,
        operator: Operator,
        left: &'a Node,
        right: &'a Node,
        context: &Context<'a>,
    ) -> Result<Value<'a>, EvalError> {
        let both = || Ok::<_, EvalError>((left.eval(context)?, right.eval(context)?));
        match operator {
            Operator::And | Operator::Or => self.logical(operator, left, right, context),
            Operator::Equal => {
                let (left, right) = both()?;
                self.equal(&left, &right).map(Value::Bool)
            }
            Operator::NotEqual => {
                let (left, right) = both()?;
                self.equal(&left, &right).map(|equal| Value::Bool(!equal))
            }
            Operator::Less | Operator::Greater | Operator::LessEqual | Operator::GreaterEqual => {
                let (left, right) = both()?;
                self.order(operator, &left, &right)
            }
            Operator::In => match both()? {
                (left, Value::List(items)) => {
                    for item in &items {
                        if self.equal(&left, item)? {
                            return Ok(Value::Bool(true));
                        }
                    }
                    Ok(Value::Bool(false))
                }
                (_, other) => Err(self.error(format!(
                    "'in' needs a list on its right, got {}",
                    other.type_name()
                ))),
            },
            Operator::Add | Operator::Subtract => {
                let (left, right) = both()?;
                self.arithmetic(operator, left, right)
            }
        }
    }

    /// `&&` and `||` decide left to right and skip the right side once the
    /// left decides, so `image.tag != null && image.tag.matches(..)` never
    /// reads a null tag. An error on the left is not absorbed by the right
    /// (full CEL would): an error keeps the image, the safe side.
    fn logical<'a>(
        &'a self,
        operator: Operator,
        left: &'a Node,
        right: &'a Node,
        context: &Context<'a>,
    ) -> Result<Value<'a>, EvalError> {
        let decisive = operator == Operator::Or;
        let side = |value: Value| match value {
            Value::Bool(value) => Ok(value),
            other => Err(self.error(format!(
                "'{}' needs bools, got {}",
                operator.symbol(),
                other.type_name()
            ))),
        };
        if side(left.eval(context)?)? == decisive {
            return Ok(Value::Bool(decisive));
        }
        side(right.eval(context)?).map(Value::Bool)
    }

    /// `< > <= >=` on two ints or two strings.
    fn order<'a>(&self, operator: Operator, left: &Value, right: &Value) -> Result<Value<'a>, EvalError> {
        let ordering = match (left, right) {
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Str(a), Value::Str(b)) => a.cmp(b),
            _ => {
                return Err(self.error(format!(
                    "'{}' cannot compare {} with {}",
                    operator.symbol(),
                    left.type_name(),
                    right.type_name()
                )));
            }
        };
        let holds = match operator {
            Operator::Less => ordering.is_lt(),
            Operator::Greater => ordering.is_gt(),
            Operator::LessEqual => ordering.is_le(),
            _ => ordering.is_ge(),
        };
        Ok(Value::Bool(holds))
    }

    /// `+ -` on ints, with overflow an error; `+` also joins two strings, as in CEL.
    fn arithmetic<'a>(
        &self,
        operator: Operator,
        left: Value<'a>,
        right: Value<'a>,
    ) -> Result<Value<'a>, EvalError> {
        match (left, right) {
            (Value::Int(a), Value::Int(b)) => {
                let result = if operator == Operator::Add {
                    a.checked_add(b)
                } else {
                    a.checked_sub(b)
                };
                result
                    .map(Value::Int)
                    .ok_or_else(|| self.error("integer overflow".into()))
            }
            (Value::Str(a), Value::Str(b)) if operator == Operator::Add => {
                Ok(Value::Str(Cow::Owned(format!("{a}{b}"))))
            }
            (left, right) => Err(self.error(format!(
                "'{}' needs two ints, got {} and {}",
                operator.symbol(),
                left.type_name(),
                right.type_name()
            ))),
        }
    }

    /// CEL equality: `null` equals only `null` and may be compared with
    /// anything (`image.tag == null`); other values must share a type.
    fn equal(&self, left: &Value, right: &Value) -> Result<bool, EvalError> {
        match (left, right) {
            (Value::Null, other) | (other, Value::Null) => Ok(matches!(other, Value::Null)),
            (Value::List(a), Value::List(b)) => {
                if a.len() != b.len() {
                    return Ok(false);
                }
                for (a, b) in a.iter().zip(b) {
                    if !self.equal(a, b)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            (a, b) if a.type_name() == b.type_name() => Ok(a == b),
            (a, b) => Err(self.error(format!(
                "cannot compare {} with {} for equality",
                a.type_name(),
                b.type_name()
            ))),
        }
    }

    fn call<'a>(
        &'a self,
        function: Function,
        argument: Option<&'a Node>,
        context: &Context<'a>,
    ) -> Result<Value<'a>, EvalError> {
        let count = match argument.map(|node| node.eval(context)).transpose()? {
            None => 0,
            Some(Value::Int(count)) => count,
            Some(other) => {
                let name = FUNCTIONS
                    .iter()
                    .find(|(_, known, _)| *known == function)
                    .map_or("", |(name, ..)| *name);
                return Err(self.error(format!("{name}() needs an int, got {}", other.type_name())));
            }
        };
        let scaled = |unit: i64| {
            count
                .checked_mul(unit)
                .map(Value::Int)
                .ok_or_else(|| self.error("integer overflow".into()))
        };
        // Ranks count tags only: an untagged image is never in the top n.
        let within = |rank: Option<usize>| {
            let ranked = context.tag.is_some()
                && rank.is_some_and(|rank| i64::try_from(rank).is_ok_and(|rank| rank <= count));
            Ok(Value::Bool(ranked))
        };
        match function {
            Function::Now => Ok(Value::Int(context.now)),
            Function::Days => scaled(SECONDS_PER_DAY),
            Function::Hours => scaled(SECONDS_PER_HOUR),
            Function::Minutes => scaled(SECONDS_PER_MINUTE),
            Function::TopPushed => within(context.pushed_rank),
            Function::TopPulled => within(context.pulled_rank),
        }
    }

    fn method<'a>(
        &'a self,
        method: StringMethod,
        receiver: &'a Node,
        argument: &'a Node,
        regex: Option<&Pattern>,
        context: &Context<'a>,
    ) -> Result<Value<'a>, EvalError> {
        let name = METHODS
            .iter()
            .find(|(_, known)| *known == method)
            .map_or("", |(name, _)| *name);
        let text = match receiver.eval(context)? {
            Value::Str(text) => text,
            other => return Err(self.error(format!("'{name}' needs a string, got {}", other.type_name()))),
        };
        let argument = match argument.eval(context)? {
            Value::Str(argument) => argument,
            other => {
                return Err(self.error(format!(
                    "'{name}' needs a string argument, got {}",
                    other.type_name()
                )));
            }
        };
        let holds = match method {
            StringMethod::Matches => match regex {
                Some(regex) => regex.is_match(&text),
                // Only a computed argument gets here; a literal was compiled at parse time.
                None => Pattern::new(&argument)
                    .map_err(|message| self.error(message))?
                    .is_match(&text),
            },
            StringMethod::StartsWith => text.starts_with(argument.as_ref()),
            StringMethod::EndsWith => text.ends_with(argument.as_ref()),
            StringMethod::Contains => text.contains(argument.as_ref()),
        };
        Ok(Value::Bool(holds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000;
    const DAY: i64 = 86_400;

    fn image(tag: Option<&str>, pushed_days_ago: i64) -> Image<'_> {
        Image {
            tag,
            pushed_at: NOW - pushed_days_ago * DAY,
            last_pulled_at: 0,
            pushed_rank: tag.map(|_| 1),
            pulled_rank: None,
        }
    }

    fn keeps(rule: &str, image: &Image) -> bool {
        Rule::parse(rule)
            .unwrap_or_else(|error| panic!("{rule}: {error}"))
            .keeps(image, NOW)
            .unwrap_or_else(|error| panic!("{rule}: {error}"))
    }

    fn parse_error(rule: &str) -> RuleError {
        match Rule::parse(rule) {
            Ok(_) => panic!("{rule} parsed"),
            Err(error) => error,
        }
    }

    fn eval_error(rule: &str, image: &Image) -> String {
        let parsed = Rule::parse(rule).unwrap_or_else(|error| panic!("{rule}: {error}"));
        match parsed.keeps(image, NOW) {
            Ok(keep) => panic!("{rule} evaluated to {keep}"),
            Err(error) => error,
        }
    }

    #[test]
    fn the_retention_how_to_basic_and_time_rules() {
        // configure-retention-policies.md, "Basic Configuration" and "Time-Based Retention".
        let latest = image(Some("latest"), 400);
        let old = image(Some("v1"), 31);
        let recent = image(Some("v2"), 29);
        assert!(keeps(r#"image.tag == "latest""#, &latest));
        assert!(!keeps(r#"image.tag == "latest""#, &old));
        assert!(!keeps(r#"image.tag == "latest""#, &image(None, 0)));
        let thirty = "image.pushed_at > now() - days(30)";
        assert!(keeps(thirty, &recent));
        assert!(!keeps(thirty, &old));
        assert!(
            keeps(thirty, &image(None, 1)),
            "untagged manifests have a push time too"
        );
        assert!(keeps("image.pushed_at > now() - days(90)", &old));
        assert!(!keeps("image.pushed_at > now() - days(90)", &latest));
        assert!(keeps("image.pushed_at > now() - days(365)", &image(None, 364)));
        assert!(!keeps("image.pushed_at > now() - days(365)", &image(None, 366)));
        for days in [7, 14] {
            let rule = format!("image.pushed_at > now() - days({days})");
            assert!(keeps(&rule, &image(None, days - 1)));
            assert!(!keeps(&rule, &image(None, days + 1)));
        }
        // "Or pulled within 7 days"; 0 means never pulled.
        let pulled = "image.last_pulled_at > now() - days(7)";
        let mut stale = old;
        assert!(!keeps(pulled, &stale), "never pulled");
        stale.last_pulled_at = NOW - 6 * DAY;
        assert!(keeps(pulled, &stale));
        stale.last_pulled_at = NOW - 8 * DAY;
        assert!(!keeps(pulled, &stale));
    }

    #[test]
    fn keep_tagged_delete_untagged() {
        assert!(keeps("image.tag != null", &image(Some("x"), 1000)));
        assert!(!keeps("image.tag != null", &image(None, 0)));
        assert!(keeps("image.tag == null", &image(None, 0)));
    }

    #[test]
    fn top_k_counts_tags_only() {
        // "Top-K Retention", and the reference: ranks contain tag names only.
        let ranked = |pushed, pulled| Image {
            tag: Some("t"),
            pushed_at: NOW,
            last_pulled_at: NOW,
            pushed_rank: pushed,
            pulled_rank: pulled,
        };
        assert!(keeps("top_pushed(10)", &ranked(Some(10), None)));
        assert!(!keeps("top_pushed(10)", &ranked(Some(11), None)));
        assert!(keeps("top_pushed(20)", &ranked(Some(1), None)));
        assert!(keeps("top_pulled(5)", &ranked(None, Some(5))));
        assert!(!keeps("top_pulled(5)", &ranked(None, Some(6))));
        assert!(
            !keeps("top_pulled(5)", &ranked(Some(1), None)),
            "never pulled: unranked"
        );
        assert!(!keeps("top_pushed(0)", &ranked(Some(1), None)));
        assert!(!keeps("top_pushed(-1)", &ranked(Some(1), None)));
        let untagged = Image {
            tag: None,
            pushed_rank: Some(1),
            pulled_rank: Some(1),
            ..ranked(None, None)
        };
        assert!(
            !keeps("top_pushed(50)", &untagged),
            "an untagged image never matches"
        );
        assert!(!keeps("top_pulled(10)", &untagged));
    }

    #[test]
    fn semantic_version_rules_of_both_documents() {
        // The how-to writes them in TOML literal strings, the reference in CEL:
        // either way the CEL source holds `\\.`, the regex `\.`.
        let rules = [
            r#"image.tag != null && image.tag.matches("^v?[0-9]+\\.[0-9]+\\.[0-9]+$")"#,
            r#"image.tag != null && image.tag.matches('^v?[0-9]+\\.[0-9]+\\.[0-9]+$')"#,
        ];
        for rule in rules {
            assert!(keeps(rule, &image(Some("v1.2.3"), 999)));
            assert!(keeps(rule, &image(Some("1.2.3"), 999)));
            assert!(!keeps(rule, &image(Some("v1.2"), 0)));
            assert!(!keeps(rule, &image(Some("v1x2x3"), 0)), "the dot is escaped");
            assert!(!keeps(rule, &image(None, 0)), "null tag short-circuits");
        }
        let release = r#"image.tag != null && image.tag.matches("^v[0-9]+\\.[0-9]+\\.[0-9]+$")"#;
        assert!(keeps(release, &image(Some("v1.2.3"), 999)));
        assert!(!keeps(release, &image(Some("1.2.3"), 999)));
        let production = r#"image.tag != null && image.tag.matches("^v[0-9]+\\.")"#;
        assert!(keeps(production, &image(Some("v12.x"), 999)));
        assert!(!keeps(production, &image(Some("v12"), 999)));
    }

    #[test]
    fn the_combined_rules_keep_what_the_how_to_says() {
        let rules = [
            r#"image.tag == "latest""#,
            r#"image.tag != null && image.tag.matches("^v[0-9]+\\.[0-9]+\\.[0-9]+$")"#,
            "image.tag != null && image.pushed_at > now() - days(30)",
            "image.pushed_at > now() - days(7)",
            "top_pulled(10)",
        ]
        .map(|rule| Rule::parse(rule).unwrap());
        let kept = |image: &Image| rules.iter().any(|rule| rule.keeps(image, NOW).unwrap());
        assert!(kept(&image(Some("latest"), 1000)), "always keep latest");
        assert!(kept(&image(Some("v1.0.0"), 1000)), "release tags forever");
        assert!(kept(&image(Some("feature"), 20)), "other tags for 30 days");
        assert!(!kept(&image(Some("feature"), 40)));
        assert!(kept(&image(None, 6)), "untagged for 7 days");
        assert!(!kept(&image(None, 8)));
        let mut pulled = image(Some("feature"), 40);
        pulled.pulled_rank = Some(10);
        assert!(kept(&pulled), "top 10 most pulled");
    }

    #[test]
    fn the_reference_string_functions_and_lists() {
        let tag = image(Some("release-2024"), 0);
        assert!(keeps("image.tag == 'release-2024'", &tag));
        assert!(keeps("image.tag.startsWith('release-')", &tag));
        assert!(!keeps("image.tag.startsWith('dev-')", &tag));
        assert!(keeps(r#"image.tag.endsWith("2024")"#, &tag));
        assert!(keeps(r#"image.tag.contains("se-2")"#, &tag));
        assert!(keeps("image.tag in ['latest', 'release-2024']", &tag));
        assert!(
            !keeps("image.tag in ['latest', 'stable',]", &tag),
            "trailing comma"
        );
        assert!(!keeps("image.tag in []", &tag));
        assert!(
            !keeps("image.tag in ['latest']", &image(None, 0)),
            "null is in no list of strings"
        );
        assert!(
            keeps("image.tag.matches('^(?!dev-).*$')", &tag),
            "Pattern's leading lookahead"
        );
        assert!(!keeps(
            "image.tag.matches('^(?!dev-).*$')",
            &image(Some("dev-1"), 0)
        ));
    }

    #[test]
    fn operators_precedence_and_literals() {
        let any = image(Some("a"), 0);
        assert!(keeps("true || false && false", &any), "&& binds tighter than ||");
        assert!(!keeps("(true || false) && false", &any));
        assert!(keeps("!false", &any));
        assert!(keeps("!!true", &any));
        assert!(keeps("!(1 == 2)", &any));
        assert!(keeps("1 + 2 - 4 == -1", &any));
        assert!(keeps("3 - -2 == 5", &any));
        assert!(keeps("-(2) < 0", &any));
        assert!(keeps("1 <= 1 && 1 >= 1 && 1 < 2 && 2 > 1 && 1 != 2", &any));
        assert!(keeps("'a' < 'b' && \"b\" >= 'b'", &any));
        assert!(keeps("'v' + '1' == 'v1'", &any));
        assert!(keeps(
            "days(1) == 86400 && hours(2) == 7200 && minutes(3) == 180",
            &any
        ));
        assert!(keeps("now() == 1750000000", &any));
        assert!(keeps("null == null && !(null != null)", &any));
        assert!(keeps("[1, 2] == [1, 2] && [1] != [1, 2] && 2 in [1, 2]", &any));
        assert!(keeps(r"'it\'s' == 'it' + '\'s' && 'a\\b'.contains('\\')", &any));
        assert!(keeps(
            "'tab\\there'.contains('\\t') && \"q\\\"\".endsWith('\"')",
            &any
        ));
        assert!(
            keeps("  image.tag\n==\t'a'  ", &any),
            "whitespace anywhere between tokens"
        );
        assert!(keeps("9223372036854775807 > 0", &any));
    }

    #[test]
    fn pull_time_use_is_reported() {
        assert!(
            !Rule::parse("image.pushed_at > now() - days(30)")
                .unwrap()
                .uses_pull_time()
        );
        assert!(!Rule::parse("top_pushed(3)").unwrap().uses_pull_time());
        assert!(
            Rule::parse("image.last_pulled_at > now() - days(7)")
                .unwrap()
                .uses_pull_time()
        );
        assert!(
            Rule::parse("image.tag == 'a' || (top_pulled(5))")
                .unwrap()
                .uses_pull_time()
        );
        assert!(
            Rule::parse("[image.last_pulled_at] == [0]")
                .unwrap()
                .uses_pull_time()
        );
    }

    #[test]
    fn parse_errors_name_the_position() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "image.pushed_at > now() - dayz(30)",
                27,
                "unknown function 'dayz'",
            ),
            ("image.tag == \"latest", 14, "unterminated string"),
            ("image.tag == 'lat\nest'", 14, "unterminated string"),
            (
                "image.tag = 'x'",
                11,
                "unexpected character '=' (did you mean '=='?)",
            ),
            ("image.tag == 'a' & true", 18, "did you mean '&&'?"),
            ("true | false", 6, "did you mean '||'?"),
            ("image.pushed_at * 2", 17, "unexpected character '*'"),
            ("image.size > 0", 7, "unknown field 'image.size'"),
            ("image > 0", 7, "'image' is not a value by itself"),
            ("identity.username == 'a'", 1, "unknown identifier 'identity'"),
            (
                "image.tag == 'a' image",
                18,
                "unexpected 'image' after the end of the rule",
            ),
            ("true true", 6, "unexpected 'true' after the end"),
            ("(true", 6, "expected ')' to close '(', found end of rule"),
            ("", 1, "expected a value, found end of rule"),
            ("image.tag ==", 13, "expected a value, found end of rule"),
            ("days()", 1, "days() takes one argument, none given"),
            ("days(1, 2)", 1, "days() takes one argument, more given"),
            ("now(1)", 1, "now() takes no argument, one given"),
            ("image.tag.size()", 11, "unknown method 'size'"),
            ("image.tag.matches('a', 'b')", 22, "'matches' takes one argument"),
            ("image.tag.matches('[')", 19, "invalid regex \"[\""),
            (
                "image.tag.matches('(?=x)')",
                19,
                "lookahead (?=...) at byte 1 is not supported",
            ),
            ("image.tag.matches('\\d')", 20, "unknown escape '\\d'"),
            ("1.5 > 0", 1, "floating-point numbers are not supported"),
            ("30d > 0", 3, "unexpected 'd' after a number"),
            (
                "99999999999999999999 > 0",
                1,
                "integer 99999999999999999999 is out of range",
            ),
            ("[1, 2", 6, "expected ']' to close the list"),
            ("image.tag in", 13, "expected a value"),
            ("é == 'x'", 1, "unexpected character 'é'"),
            ("'é' == x", 8, "unknown identifier 'x'"),
        ];
        for (rule, position, message) in cases {
            let error = parse_error(rule);
            assert!(error.message.contains(message), "{rule}: {error}");
            assert_eq!(error.position, *position, "{rule}: {error}");
        }
        assert_eq!(
            parse_error("now() - dayz(1)").to_string(),
            "at position 9: unknown function 'dayz' (known: now, days, hours, minutes, top_pushed, top_pulled)"
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}true{}", "(".repeat(200), ")".repeat(200));
        assert!(parse_error(&deep).message.contains("nested deeper than 64"));
        let negations = format!("{}true", "!".repeat(200));
        assert!(parse_error(&negations).message.contains("nested deeper"));
        let fine = format!("{}true{}", "(".repeat(30), ")".repeat(30));
        assert!(keeps(&fine, &image(None, 0)));
    }

    #[test]
    fn type_errors_are_evaluation_errors() {
        let tagged = image(Some("v1"), 0);
        let untagged = image(None, 0);
        let cases: &[(&str, &Image, &str)] = &[
            (
                "image.tag > 5",
                &tagged,
                "at position 11: '>' cannot compare string with int",
            ),
            (
                "image.pushed_at == 'x'",
                &tagged,
                "cannot compare int with string for equality",
            ),
            (
                "image.tag.matches('^v')",
                &untagged,
                "'matches' needs a string, got null",
            ),
            (
                "image.tag < 'b'",
                &untagged,
                "'<' cannot compare null with string",
            ),
            ("image.tag && true", &tagged, "'&&' needs bools, got string"),
            ("false || 1", &tagged, "'||' needs bools, got int"),
            ("!image.pushed_at", &tagged, "'!' needs a bool, got int"),
            ("-image.tag == 1", &tagged, "'-' needs an int, got string"),
            (
                "image.tag - 'a' == ''",
                &tagged,
                "'-' needs two ints, got string and string",
            ),
            ("days('1') > 0", &tagged, "days() needs an int, got string"),
            ("top_pushed(true)", &tagged, "top_pushed() needs an int, got bool"),
            (
                "image.tag in 'v1'",
                &tagged,
                "'in' needs a list on its right, got string",
            ),
            ("image.tag in [1]", &tagged, "cannot compare string with int"),
            (
                "image.tag.startsWith(1)",
                &tagged,
                "'startsWith' needs a string argument, got int",
            ),
            (
                "image.tag.matches(image.tag + '[')",
                &tagged,
                "invalid regex \"v1[\"",
            ),
            ("days(106751991167301) > 0", &tagged, "integer overflow"),
            ("-9223372036854775807 - 2 < 0", &tagged, "integer overflow"),
            ("image.pushed_at", &tagged, "the rule gives an int, not a bool"),
            ("image.tag", &untagged, "the rule gives a null, not a bool"),
            ("[true]", &tagged, "the rule gives a list, not a bool"),
        ];
        for (rule, image, message) in cases {
            let error = eval_error(rule, image);
            assert!(error.contains(message), "{rule}: {error}");
        }
        // The left side of && decides first: a null tag never reaches matches().
        assert!(!keeps("image.tag != null && image.tag.matches('^v')", &untagged));
        // An error on the left is not absorbed by a decisive right side.
        assert!(eval_error("image.tag.matches('^v') || true", &untagged).contains("needs a string"));
    }

    #[test]
    fn rules_keep_and_compare_their_source() {
        let rule = Rule::parse("top_pushed(3)").unwrap();
        assert_eq!(rule.source(), "top_pushed(3)");
        assert_eq!(rule, Rule::parse("top_pushed(3)").unwrap());
        assert_ne!(rule, Rule::parse("top_pushed( 3)").unwrap());
        assert_eq!(format!("{rule:?}"), "Rule(\"top_pushed(3)\")");
    }
}
