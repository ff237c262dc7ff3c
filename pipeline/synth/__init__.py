"""The built-in synthetic faces: face parameters, drawing, bias injection, the RAF-DB-layout writer."""
